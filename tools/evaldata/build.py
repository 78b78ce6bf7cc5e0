"""Build the project's own labelled eval files (``*.jsonl``) from the hand-written sources here.

    .venv/bin/python tools/evaldata/build.py     # rewrites news_dev/agent_dev/secrets_config_dev.jsonl

Everything here was written for this project: the sentences and records in ``news_dev.txt``
and ``agent_dev.txt`` (``[text](TYPE)`` marks a gold span), and the config snippets below,
whose secret values are random strings of each vendor's published shape (seeded, so a rebuild
gives the same files). Nothing comes from presidio-research's generator or templates or from
another project's test fixtures. Card numbers are made Luhn-valid by fixing the last digit.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = re.compile(r"\[([^\[\]]+)\]\(([A-Z_]+)\)")
B64 = string.ascii_letters + string.digits + "+/"
URLSAFE = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits
rng = random.Random(18)


def luhn_fix(number: str) -> str:
    """``number`` with its last digit replaced so that the digits pass the Luhn check."""
    at = max(i for i, c in enumerate(number) if c.isdigit())
    for last in "0123456789":
        candidate = number[:at] + last + number[at + 1 :]
        total = 0
        for i, c in enumerate(reversed([c for c in candidate if c.isdigit()])):
            d = int(c) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError(number)


def unmark(marked: str) -> tuple[str, list[dict]]:
    """The text without marks, and the gold spans the marks gave."""
    out, spans, pos = [], [], 0
    length = 0
    for m in MARK.finditer(marked):
        out.append(marked[pos : m.start()])
        length += m.start() - pos
        value, kind = m.group(1), m.group(2)
        if kind == "CREDIT_CARD":
            value = luhn_fix(value)
        spans.append({"start": length, "end": length + len(value), "type": kind})
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(marked[pos:])
    return "".join(out), spans


def pii_rows(source: str, with_format: bool) -> list[dict]:
    rows = []
    for n, line in enumerate((HERE / source).read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.startswith("#"):
            continue
        fmt = "text"
        if with_format:
            fmt, _, line = line.partition("\t")
        if fmt == "text":
            line = line.replace("\\n", "\n")
        text, spans = unmark(line)
        if fmt in ("json", "sse"):
            for doc in ([text] if fmt == "json" else [t[5:] for t in text.splitlines()]):
                json.loads(doc)  # every row must be valid JSON
        row = {"id": f"{source.split('.')[0]}-{n}", "text": text, "spans": spans}
        if fmt != "text":
            row["format"] = fmt
        rows.append(row)
    return rows


# --- secrets in config and code -------------------------------------------------------------


def rand(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def aws_secret() -> str:
    while True:
        v = rand(B64, 40)
        if any(c in v for c in "+/") and any(c.isdigit() for c in v):
            return v


def password() -> str:
    words = ["Harbor", "quiet", "Lantern", "maple", "Orbit", "copper", "Delta", "fjord"]
    return rng.choice(words) + rand(string.digits, 2) + rng.choice("!#%&*?@$") + rng.choice(words)


def azure_key() -> str:
    return base64.b64encode(rng.randbytes(64)).decode()


def pem_body() -> str:
    return "\\n".join(base64.b64encode(rng.randbytes(48)).decode() for _ in range(6))


def positives() -> list[tuple[str, str, str]]:
    """(type, text, secret) rows; ``{S}`` in a template is the secret."""
    out = []

    def add(kind: str, template: str, secret: str) -> None:
        out.append((kind, template.replace("{S}", secret), secret))

    for tpl in [
        "[default]\naws_access_key_id = AKIA{ID}\naws_secret_access_key = {S}\n",
        "[profile deploy]\nregion = eu-west-1\naws_secret_access_key={S}",
        "AWS_SECRET_ACCESS_KEY={S}\nAWS_DEFAULT_REGION=us-east-1",
        "export AWS_SECRET_ACCESS_KEY=\"{S}\"",
        "aws:\n  access_key_id: AKIA{ID}\n  secret_access_key: {S}\n",
        "credentials:\n  secretAccessKey: '{S}'",
        '{"Credentials": {"AccessKeyId": "ASIA{ID}", "SecretAccessKey": "{S}", "SessionToken": "x"}}',
        'const s3 = new S3({ accessKeyId: "AKIA{ID}", secretAccessKey: "{S}" });',
        'provider "aws" {\n  access_key = "AKIA{ID}"\n  secret_key = "{S}"\n}',
        "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: {S}",
        "s3cmd --access_key=AKIA{ID} --secret_key={S} ls",
        "Here is the key you asked for: {S}",
        "the secret for the backup user is {S} (rotate it next week)",
        "aws_secret_access_key = {S}",
    ]:
        for _ in range(2):
            key_id = rand(string.ascii_uppercase + "234567", 16)
            add("AWS_SECRET_KEY_CONFIG", tpl.replace("{ID}", key_id), aws_secret())
    # markers inside a real-shaped, high-entropy value must not make it pass
    for _ in range(4):
        s = aws_secret()
        s = s[:20] + "EXAMPLE" + s[27:]
        add("AWS_SECRET_KEY_CONFIG", "aws_secret_access_key = {S}", s)
    for tpl in [
        'password = "{S}"',
        "password: {S}",
        'DB_PASSWORD="{S}"',
        "POSTGRES_PASSWORD={S}",
        '"AdminPassword": "{S}",',
        "<add key=\"SmtpPassword\" value=\"{S}\" />",
        "<password>{S}</password>",
        "spring.datasource.password={S}",
        "machine api.internal.example login deploy password {S}",
        "Driver={ODBC Driver 18 for SQL Server};Server=tcp:sql1,1433;Database=sales;Uid=svc;Pwd={S};",
        "Server=db01;Database=hr;User Id=sa;Password={S};",
        "jdbc:postgresql://db:5432/app?user=app&password={S}",
        "jdbc:mysql://10.0.0.4:3306/shop?user=root&password={S}&useSSL=true",
        "mysql -h db -u root -p'{S}' shop",
        "docker run -e MYSQL_ROOT_PASSWORD={S} mysql:8",
        "'password' => '{S}',",
        "secret_key: {S}",
        "client_secret = \"{S}\"",
        "api_token: {S}",
        "redis:\n  host: cache\n  password: \"{S}\"",
        "[database]\nuser = app\npasswd = {S}",
        "SMTP_PASS={S}",
        "ldap_bind_pw: {S}",
        '{"username": "svc-backup", "password": "{S}"}',
        "PGPASSWORD={S} psql -h db -U app",
    ]:
        add("GENERIC_PASSWORD_CONFIG", tpl, password())
    for _ in range(6):
        acct = rng.choice(["acmeprod", "logsarchive", "mediastore", "backupsweu"])
        add("AZURE_STORAGE_KEY",
            f"DefaultEndpointsProtocol=https;AccountName={acct};AccountKey={{S}};"
            "EndpointSuffix=core.windows.net", azure_key())  # fmt: skip
    for tpl in ["AZURE_STORAGE_KEY={S}", 'az storage blob list --account-key "{S}"',
                "storage:\n  account_key: {S}"]:  # fmt: skip
        add("AZURE_STORAGE_KEY", tpl, azure_key())
    for _ in range(5):
        body = pem_body()
        key_id = rand("0123456789abcdef", 40)
        project = rng.choice(["billing-prod-2231", "ml-train-88", "web-412"])
        doc = (
            '{"type": "service_account", "project_id": "' + project + '", "private_key_id": "'
            + key_id + '", "private_key": "-----BEGIN PRIVATE KEY-----\\n' + body
            + '\\n-----END PRIVATE KEY-----\\n", "client_email": "deploy@' + project
            + '.iam.gserviceaccount.com", "client_id": "1' + rand(string.digits, 20) + '"}'
        )
        out.append(("GCP_SERVICE_ACCOUNT", doc, body[:40]))
    for tpl in ["//registry.npmjs.org/:_authToken={S}", "NPM_TOKEN={S}",
                "npm config set //registry.npmjs.org/:_authToken {S}"]:  # fmt: skip
        for _ in range(2):
            add("NPM_TOKEN", tpl, "npm_" + rand(ALNUM, 36))
    add("NPM_TOKEN", "//npm.pkg.github.com/:_authToken={S}", "npm_" + rand(ALNUM, 36))
    for tpl in ["SQUARE_ACCESS_TOKEN={S}", 'client = Client(access_token="{S}")',
                "square:\n  token: {S}"]:  # fmt: skip
        add("SQUARE_TOKEN", tpl, "EAAA" + rand(URLSAFE, 60))
        add("SQUARE_TOKEN", tpl, "sq0atp-" + rand(URLSAFE, 22))
    add("SQUARE_TOKEN", "SQUARE_APP_SECRET=sq0csp-{S}", rand(URLSAFE, 43))
    for tpl in ["TELEGRAM_BOT_TOKEN={S}", "bot = telebot.TeleBot('{S}')",
                "curl https://api.telegram.org/bot{S}/getMe", "telegram:\n  token: \"{S}\""]:  # fmt: skip
        add("TELEGRAM_TOKEN", tpl, rand(string.digits, 10) + ":AA" + rand(URLSAFE, 33))
    for tpl in ["DISCORD_TOKEN={S}", "client.run('{S}')", "discord:\n  bot_token: {S}"]:
        tok = (rng.choice("MN") + rand(ALNUM, 25) + "." + rand(URLSAFE, 6) + "." + rand(URLSAFE, 38))
        add("DISCORD_TOKEN", tpl, tok)
    for _ in range(3):
        url = f"https://discord.com/api/webhooks/{rand(string.digits, 18)}/{rand(URLSAFE, 68)}"
        add("DISCORD_TOKEN", "WEBHOOK_URL={S}", url)
    return out


def negatives() -> list[tuple[str, str]]:
    """(type, text) rows in which nothing is a secret."""
    sha = lambda: rand("0123456789abcdef", 40)  # noqa: E731
    return [
        ("GENERIC_PASSWORD_CONFIG", 'password = "${DB_PASSWORD}"'),
        ("GENERIC_PASSWORD_CONFIG", "password: ${POSTGRES_PASSWORD}"),
        ("GENERIC_PASSWORD_CONFIG", "DB_PASSWORD=$DB_PASSWORD"),
        ("GENERIC_PASSWORD_CONFIG", 'password = "changeme"'),
        ("GENERIC_PASSWORD_CONFIG", "password: <your-password>"),
        ("GENERIC_PASSWORD_CONFIG", "password = os.environ[\"DB_PASSWORD\"]"),
        ("GENERIC_PASSWORD_CONFIG", "password: {{ .Values.db.password }}"),
        ("GENERIC_PASSWORD_CONFIG", "password_min_length = 12"),
        ("GENERIC_PASSWORD_CONFIG", '"passwordPolicy": "strong",'),
        ("GENERIC_PASSWORD_CONFIG", "secret_name: prod/db/credentials"),
        ("GENERIC_PASSWORD_CONFIG", "token_url: https://auth.example.com/oauth/token"),
        ("GENERIC_PASSWORD_CONFIG", "api_key: null"),
        ("GENERIC_PASSWORD_CONFIG", "password = getpass.getpass()"),
        ("GENERIC_PASSWORD_CONFIG", "Pwd=%DB_PWD%;"),
        ("GENERIC_PASSWORD_CONFIG", "jdbc:postgresql://db:5432/app?user=app&password=${JDBC_PASSWORD}"),
        ("GENERIC_PASSWORD_CONFIG", "machine github.com login octocat password $GITHUB_TOKEN"),
        ("GENERIC_PASSWORD_CONFIG", "secret_key = \"<secret-key>\""),
        ("GENERIC_PASSWORD_CONFIG", "max_tokens: 4096"),
        ("GENERIC_PASSWORD_CONFIG", "token_type: Bearer"),
        ("GENERIC_PASSWORD_CONFIG", "password: ********"),
        ("AWS_SECRET_KEY_CONFIG", "aws_secret_access_key = YOUR_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_KEY_CONFIG", "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}"),
        ("AWS_SECRET_KEY_CONFIG", "aws_secret_access_key = <secret>"),
        ("AWS_SECRET_KEY_CONFIG", f"commit = {sha()}"),
        ("AWS_SECRET_KEY_CONFIG", f"git checkout {sha()}"),
        ("AWS_SECRET_KEY_CONFIG", f"Merge: {sha()} {sha()}"),
        ("AWS_SECRET_KEY_CONFIG", f'"sha": "{sha()}", "node_id": "C_kwDOA"'),
        ("AWS_SECRET_KEY_CONFIG", f"resolved: https://codeload.github.com/org/lib/tar.gz/{sha()}"),
        ("AWS_SECRET_KEY_CONFIG", "image: registry.local/api@sha256:" + rand("0123456789abcdef", 64)),
        ("AWS_SECRET_KEY_CONFIG", "src/components/Dashboard/WidgetGrid/index.tsx"),
        ("AWS_SECRET_KEY_CONFIG", "/usr/lib/python3/dist-packages/setuptools/__init__.py"),
        ("AZURE_STORAGE_KEY", "AccountKey=<storage-account-key>"),
        ("AZURE_STORAGE_KEY", "UseDevelopmentStorage=true"),
        ("GCP_SERVICE_ACCOUNT",
         '{"type": "service_account", "project_id": "demo", "private_key": "${GCP_KEY}"}'),
        ("NPM_TOKEN", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}"),
        ("NPM_TOKEN", "npm install --save-dev typescript@5.4.2"),
        ("SQUARE_TOKEN", "SQUARE_ACCESS_TOKEN=your-access-token"),
        ("TELEGRAM_TOKEN", "TELEGRAM_BOT_TOKEN=<bot-token>"),
        ("TELEGRAM_TOKEN", "Meeting at 10:30, room 4"),
        ("DISCORD_TOKEN", "DISCORD_TOKEN=${DISCORD_TOKEN}"),
        ("DISCORD_TOKEN", "version: 2.14.0.post1"),
    ]


def main() -> None:
    files = {
        "news_dev.jsonl": pii_rows("news_dev.txt", with_format=False),
        "agent_dev.jsonl": pii_rows("agent_dev.txt", with_format=True),
    }
    secrets = [
        {"text": text, "secret": secret, "type": kind, "label": "positive",
         "source": "egress-gateway tools/evaldata/build.py", "license": "project"}
        for kind, text, secret in positives()
    ] + [
        {"text": text, "secret": None, "type": kind, "label": "negative_fp",
         "source": "egress-gateway tools/evaldata/build.py", "license": "project"}
        for kind, text in negatives()
    ]  # fmt: skip
    files["secrets_config_dev.jsonl"] = secrets
    for name, rows in files.items():
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                 encoding="utf-8")  # fmt: skip
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
