"""Table-driven tests for every recognizer: true positives and known false positives."""

from __future__ import annotations

import pytest
from detection_helpers import found

# Tokens below are synthetic (random characters in the vendor's documented shape).
TRUE_POSITIVES = [
    # (id, text, entity, expected value or None for "any overlap")
    ("email", "write to jane.doe@example.org today", "EMAIL_ADDRESS", "jane.doe@example.org"),
    ("phone_us", "call me at 415-555-2671 please", "PHONE_NUMBER", "415-555-2671"),
    ("phone_intl_context", "Mobile: 0490 39 07 81", "PHONE_NUMBER", "0490 39 07 81"),
    ("phone_label_suffix", "085 175 7641-Office", "PHONE_NUMBER", "085 175 7641"),
    ("card_visa", "card 4111 1111 1111 1111 expires", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("card_jcb_context", "my card 213176828496175 is lost", "CREDIT_CARD", "213176828496175"),
    ("ssn", "Here's my SSN: 460-89-9847", "US_SSN", "460-89-9847"),
    ("ssn_not_phone", "His social security number is 853-37-1694", "US_SSN", "853-37-1694"),
    ("iban", "My IBAN is GB82WEST12345698765432", "IBAN_CODE", "GB82WEST12345698765432"),
    ("ipv4", "keep getting address 41.173.96.26", "IP_ADDRESS", "41.173.96.26"),
    ("ipv6", "from 6e40:4041:c617:e898:c11:40d2:c669:2eb4 now", "IP_ADDRESS", None),
    ("bank_context", "my bank account number is 123456789012", "US_BANK_NUMBER", "123456789012"),
    ("passport_context", "my US passport number is 912803456", "US_PASSPORT", "912803456"),
    ("person", "Yesterday Barack Obama met Angela Merkel in Berlin.", "PERSON", "Barack Obama"),
    ("person_from_org", "Billing address: Sophie Lang", "PERSON", "Sophie Lang"),
    ("person_intro", "My name is Rubija", "PERSON", "Rubija"),
    ("location", "I will be travelling to Canada next week", "LOCATION", "Canada"),
    ("aws_key_id", "aws_access_key_id = AKIA0ON7V2DD57PL3JXM", "AWS_ACCESS_KEY_ID", "AKIA0ON7V2DD57PL3JXM"),
    ("aws_secret", '"SecretAccessKey" : "RMkMm8niUJ1iuhAA+AAyugy3fFt/rtrf7GFQ9xz1"',
     "AWS_SECRET_ACCESS_KEY", "RMkMm8niUJ1iuhAA+AAyugy3fFt/rtrf7GFQ9xz1"),
    ("google_api_key", "key=AIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk-", "GOOGLE_API_KEY", None),
    ("github_classic", "token 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", "GITHUB_TOKEN", None),
    ("github_pat", "github_pat_11ABLV2EA0gWlOtew7YDYY_xXoiQzNpBTaTjNuaJKYyZDzVsoXQlWknbdKH4x66HF",
     "GITHUB_TOKEN", None),
    ("gitlab", "export GITLAB=glpat-hellOworld380_testin", "GITLAB_TOKEN", "glpat-hellOworld380_testin"),
    ("slack_bot", '"bot": "xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD"',
     "SLACK_TOKEN", "xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD"),
    ("slack_webhook", "https://hooks.slack.com/services/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",
     "SLACK_TOKEN", None),
    ("stripe", "sk_live_gireogicracklegireogicrackle1231", "STRIPE_KEY", None),
    ("openai", "OPENAI_API_KEY=sk-proj-qa25MV9c7Qu0EjDIEWdcT3BlbkFJ83uCF0K4yw7RzpY39bio",
     "OPENAI_API_KEY", "sk-proj-qa25MV9c7Qu0EjDIEWdcT3BlbkFJ83uCF0K4yw7RzpY39bio"),
    ("anthropic", "x-api-key: sk-ant-api03-" + "Ab3dE_fG5h-" * 8 + "Zq9xWAA", "ANTHROPIC_API_KEY", None),
    ("huggingface", "huggingface-cli login --token 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",
     "HUGGINGFACE_TOKEN", "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"),
    ("jwt", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VybmFtZTpib2IifQ."
     "HcfCW67Uda-0gz54ZWTqmtgJnZeNem0Q757eTa9EZuw", "JWT", None),
    ("pem", "-----BEGIN RSA PRIVATE KEY-----\nMIIEpQIBAAKCAQEAn6/O8li+SX4m98LLYt/PKSzEmQ++ZBD7Loh9P13f"
     "\n-----END RSA PRIVATE KEY-----", "PEM_PRIVATE_KEY", None),
    ("url_password", "mongodb://jrfdeg42:p4Dsr8b@127.0.0.1:32768/db", "URL_PASSWORD", "p4Dsr8b"),
    ("password_assignment", "MYSQL_PASSWORD=2IWJD88FH4Y;", "PASSWORD_ASSIGNMENT", "2IWJD88FH4Y"),
    ("secret_colon", 'client_secret: "6da89121079f83b2eb6acccf8219ea98"', "PASSWORD_ASSIGNMENT",
     "6da89121079f83b2eb6acccf8219ea98"),
    ("curl_user", "curl -u elastic:P@ssw0rd$1 https://localhost:9200", "PASSWORD_ASSIGNMENT",
     "elastic:P@ssw0rd$1"),
    ("bearer", 'curl -H "Authorization: Bearer cfcabd11c7ed9a41b1a3e063c32d5114"', "BEARER_TOKEN",
     "cfcabd11c7ed9a41b1a3e063c32d5114"),
    ("detect_secrets_sendgrid", "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",
     "API_TOKEN", None),
]


@pytest.mark.parametrize(
    ("text", "entity", "value"), [c[1:] for c in TRUE_POSITIVES], ids=[c[0] for c in TRUE_POSITIVES]
)
def test_true_positive(engine, text, entity, value):
    hits = found(engine, text)
    if value is None:
        assert any(e == entity for e, _ in hits), hits
    else:
        assert (entity, value) in hits, hits


# Text that must produce no finding at all (the named false positives of the issue).
FALSE_POSITIVES = [
    ("model_id_sonnet", "claude-sonnet-4-5-20250929"),
    ("model_id_opus", "claude-opus-4-1-20250805"),
    ("messages_api_body", '{"model": "claude-opus-4-1-20250805", "max_tokens": 1024}'),
    ("model_in_prose", "Please use claude-sonnet-4-5-20250929 for this task."),
    ("order_id", "order ORD-2025080512 shipped"),
    ("epoch_seconds", "created_at 1718000000"),
    ("epoch_millis", "ts=1718000000123"),
    ("uuid", "request 550e8400-e29b-41d4-a716-446655440000 failed"),
    ("version_number", "upgraded to v1.2.3.4 and 10.0.19045"),
    ("node_word", "Node is great and React is fine"),
    ("capitalised_words", "Capitalized words like Wisdom and Discipline are often mistaken with names."),
    ("url_not_email", "see https://example.com/docs/page for details"),
    ("email_userinfo_not_url", "mail bob@example.com"),  # only EMAIL, checked below
    ("cpp_scope", "std::vector<int> v; a::b::c"),
    ("git_sha", "commit 9a038989604e8da62ecddbe2094b16ce1b778be1"),
    ("placeholder_password", 'password = "${DB_PASSWORD}"'),
    ("password_length_key", "password_length = 16"),
    ("max_tokens", '"max_tokens": 4096, "input_tokens": 12'),
    ("curl_no_password", 'curl --user "src@gmail.com" https://x'),
    ("pem_without_key", "-----BEGIN PRIVATE KEY-----\nanything\n-----END PRIVATE KEY-----"),
    ("placeholder_in_header", 'curl -H "Authorization: Bearer XXXXXXXXXXXX"'),
    ("template_in_header", 'curl -H "Authorization: Bearer $API_KEY"'),
]


@pytest.mark.parametrize(
    "text", [c[1] for c in FALSE_POSITIVES], ids=[c[0] for c in FALSE_POSITIVES]
)
def test_false_positive(engine, text):
    hits = [h for h in found(engine, text) if h[0] != "EMAIL_ADDRESS"]
    assert hits == [], hits


SPECIFIC_NOT = [
    # (id, text, entity that must NOT be produced)
    ("uk_nhs_on_us_phone", "call 415-555-2671", "UK_NHS"),
    ("url_inside_email", "mail bob@example.com", "URL"),
    ("date_in_card", "card 4111 1111 1111 1111", "DATE_TIME"),
    ("date_in_iban", "IBAN GB82WEST12345698765432", "DATE_TIME"),
    ("model_id_bank", "claude-opus-4-1-20250805", "US_BANK_NUMBER"),
    ("model_id_phone", "claude-sonnet-4-5-20250929", "PHONE_NUMBER"),
    ("iso_date_hour_phone", "502s since 2025-11-30 14:05 UTC", "PHONE_NUMBER"),
    ("iso_date_time_phone", "at 2025-11-30T14:05:09 retried", "PHONE_NUMBER"),
    ("iso_date_hour_phone_context", "call or text me since 2025-11-30 14:05 UTC", "PHONE_NUMBER"),
    ("url_password_not_email", "https://admin:s3cretPw@db.example.com/x", "EMAIL_ADDRESS"),
]


@pytest.mark.parametrize(
    ("text", "entity"), [c[1:] for c in SPECIFIC_NOT], ids=[c[0] for c in SPECIFIC_NOT]
)
def test_entity_not_produced(engine, text, entity):
    assert entity not in {e for e, _ in found(engine, text)}


PLACEHOLDER_TOKENS = [
    ("aws_x", "key = AKIAXXXXXXXXXXXXXXXX", "AWS_ACCESS_KEY_ID"),
    ("github_x", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "GITHUB_TOKEN"),
    ("hf_x", 'os.environ.get("HF_AUTH_TOKEN", "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")',
     "HUGGINGFACE_TOKEN"),
]


@pytest.mark.parametrize(
    ("text", "entity"), [c[1:] for c in PLACEHOLDER_TOKENS], ids=[c[0] for c in PLACEHOLDER_TOKENS]
)
def test_placeholder_tokens_follow_setting(make_engine, text, entity):
    """Vendor-shaped placeholders are redacted by default, kept when the policy says so."""
    assert entity in {e for e, _ in found(make_engine(), text)}
    strict = make_engine(report_placeholder_tokens=False)
    assert entity not in {e for e, _ in found(strict, text)}


def test_optional_entities_only_when_asked(make_engine):
    text = "We met on January 5th 2024 with the French delegation."
    default = make_engine()
    assert not {"DATE_TIME", "NRP"} & {f.entity_type for f in default.analyze(text)}
    opted = make_engine(entities=["DATE_TIME", "NRP"])
    assert {"DATE_TIME", "NRP"} <= {f.entity_type for f in opted.analyze(text)}


CUSTOM = [
    ("regex_with_context", "see ticket PROJ-12345 for details", "INTERNAL_TICKET", "PROJ-12345"),
    ("deny_list", "Project Nightjar ships in May", "CODENAME", "Nightjar"),
]


@pytest.mark.parametrize(("text", "entity", "value"), [c[1:] for c in CUSTOM], ids=[c[0] for c in CUSTOM])
def test_custom_recognizers(make_engine, text, entity, value):
    eng = make_engine(
        custom=[
            {"name": "tickets", "entity": "INTERNAL_TICKET", "regex": r"PROJ-[0-9]{4,}",
             "context": ["ticket", "issue"], "score": 0.3},
            {"name": "codenames", "entity": "CODENAME", "deny_list": ["bluebird", "nightjar"]},
        ]
    )
    assert (entity, value) in found(eng, text)


def test_custom_regex_needs_context_when_scored_low(make_engine):
    eng = make_engine(
        custom=[{"name": "t", "entity": "INTERNAL_TICKET", "regex": r"PROJ-[0-9]{4,}",
                 "context": ["ticket"], "score": 0.3}]
    )
    assert found(eng, "PROJ-12345") == []
    assert found(eng, "ticket PROJ-12345") == [("INTERNAL_TICKET", "PROJ-12345")]


def test_allow_list(make_engine):
    eng = make_engine(allow_list=["jane.doe@example.org"])
    assert found(eng, "write to jane.doe@example.org") == []
