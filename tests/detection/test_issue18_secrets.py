"""Issue 18's secret rules, one table of true and one of false positives per rule.

Values are random strings of each vendor's published shape, made for these tests.
"""

from __future__ import annotations

import pytest
from detection_helpers import found
from egress_gateway.detection.entities import SECRET_ENTITIES
from egress_gateway.detection.recognizers.filters import is_placeholder, looks_random

AWS = "M8nJVjluJqTLg/sxq7xA5kz/YJdkpYG2g2l344xl"
AZURE = "nv2o9mFsc6ks6VLnMcM+JpUR39f1k76nEEVlXnoP1lSHawopMNbGQ2vhp8BOKysMhjJzmIkvvPu4zZazmsV5VQ=="
AWS_MARKED = "a/lNnMiVSqmUZQ2VmJCBEXAMPLE9dfBhHuGnNAHk"
DISCORD = "NxQ7bA3kR9mLp2VwZ8tYc4Hd.Gk2P9q.Wn5Rt8Yb1Lm4Qz7Xc0Vd3Fg6Hj9Kl2Mp5Nr8"
HOOK = (
    "https://discord.com/api/webhooks/605023237499815777/"
    "kZkwihiEam0W7oufkPszNOKqoMlf_W-sWPbRyCTU3zNeATooTJbiKqJi0aB1cD2e4F5g"
)
NPM = "npm_f7QhCk5frQWux50AhuCDnJmuHLOqnx2fZyP3"

TRUE_POSITIVES = [
    # AwsSecretAccessKeyRecognizer: assignments, env pairs, bare keys, markers inside
    (AWS, f"[default]\naws_secret_access_key = {AWS}\n"),
    (AWS, f"env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: {AWS}"),
    (AWS, f"Here is the key you asked for: {AWS}"),
    (AWS_MARKED, f"aws_secret_access_key = {AWS_MARKED}"),
    # AzureStorageKeyRecognizer
    (AZURE, f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={AZURE};EndpointSuffix=x"),
    (AZURE, f'az storage blob list --account-key "{AZURE}"'),
    # DiscordTokenRecognizer
    (DISCORD, f"client.run('{DISCORD}')"),
    (HOOK, f"WEBHOOK_URL={HOOK}"),
    # PackageRegistryTokenRecognizer
    (NPM, f"npm config set //registry.npmjs.org/:_authToken {NPM}"),
    ("743b294a-cd03-11ec-9d64-0242ac120002", "//r.npm/:_authToken=743b294a-cd03-11ec-9d64-0242ac120002"),
    # PasswordAssignmentRecognizer's new frames
    ("maple64%Harbor", '<add key="SmtpPassword" value="maple64%Harbor" />'),
    ("Lantern46%Orbit", "<password>Lantern46%Orbit</password>"),
    ("Harbor44!copper", "machine api.internal.example login deploy password Harbor44!copper"),
    ("maple62?maple", "mysql -h db -u root -p'maple62?maple' shop"),
    ("Orbit77#fjord", "env:\n  - name: DB_PASSWORD\n    value: Orbit77#fjord"),
    ("copper51&Delta", "Driver={ODBC Driver 18};Server=tcp:sql1,1433;Uid=svc;Pwd=copper51&Delta;"),
    ("quiet09*Lantern", "jdbc:postgresql://db:5432/app?user=app&password=quiet09*Lantern"),
]

FALSE_POSITIVES = [
    # templates and references are not secrets
    'password = "${DB_PASSWORD}"',
    "Pwd=%DB_PWD%;",
    'password = os.environ["DB_PASSWORD"]',
    "password: {{ .Values.db.password }}",
    "//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
    "AccountKey=<storage-account-key>",
    "aws_secret_access_key = YOUR_SECRET_ACCESS_KEY",
    # 40-hex strings are git SHAs, paths have no digits
    "commit = 3f9c2d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
    "git checkout 3f9c2d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
    "src/components/Dashboard/WidgetGridItems",
    # an 88-char base64 without a storage key is an integrity hash
    "integrity sha512-" + AZURE,
    "version: 2.14.0.post1",
]


@pytest.mark.parametrize(("value", "text"), TRUE_POSITIVES)
def test_true_positives(engine, value, text):
    secrets = [v for e, v in found(engine, text) if e in SECRET_ENTITIES]
    assert any(value in v for v in secrets), found(engine, text)


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positives(engine, text):
    assert [(e, v) for e, v in found(engine, text) if e in SECRET_ENTITIES] == []


def test_markers_do_not_hide_real_shaped_values():
    assert is_placeholder("your_api_key_here") and is_placeholder("EXAMPLE_TOKEN")
    assert not is_placeholder("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert not looks_random("3f9c2d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d")  # a git SHA
