//! Unit tests of `crate::token::response`.

use super::*;

const NOW: SystemTime = SystemTime::UNIX_EPOCH;

fn ok(body: &str) -> TokenResponse {
    parse(StatusCode::OK, body.as_bytes(), None, NOW).unwrap()
}

/// Each kind of secret, planted in an `error_description` at every offset
/// around the quoted length: what is shown holds no piece of it (a window of
/// six characters), whether the secret is before, across or after the cut.
#[test]
fn a_secret_across_the_cut_is_masked_whole() {
    let secrets = [
        (
            "client secret",
            "cs-Very-Secret-Value-0123456789".to_owned(),
        ),
        (
            "refresh token",
            format!("rt-{}", "R".repeat(10) + &"x9".repeat(150)),
        ),
        (
            "access token",
            "at.eyJhbGciOiJSUzI1NiJ9.payload.sig".to_owned(),
        ),
        (
            "assertion",
            "eyJ0eXAiOiJKV1QifQ.eyJpc3MiOiJ4In0.c2lnbmF0dXJl".to_owned(),
        ),
    ];
    for (what, secret) in &secrets {
        for offset in (MAX_DESCRIPTION - 40)..(MAX_DESCRIPTION + 5) {
            let text = format!("{}{secret} and more", "A".repeat(offset));
            let body = serde_json::json!({"error": "invalid_request", "error_description": text});
            let shown = err(400, &body.to_string())
                .masked(&[secret.as_str()])
                .to_string();
            let chars: Vec<char> = secret.chars().collect();
            for window in chars.windows(6) {
                let piece: String = window.iter().collect();
                assert!(
                    !shown.contains(&piece),
                    "{what} at offset {offset}: `{piece}` shown in {shown}"
                );
            }
            assert!(shown.chars().count() < MAX_DESCRIPTION + 120, "{shown}");
        }
    }
}

fn err(status: u16, body: &str) -> GrantError {
    parse(
        StatusCode::from_u16(status).unwrap(),
        body.as_bytes(),
        None,
        NOW,
    )
    .unwrap_err()
}

#[test]
fn expires_in_as_number_string_absent_and_zero() {
    let secs = |b: &str| ok(b).lifetime.map(|d| d.as_secs());
    assert_eq!(secs(r#"{"access_token":"a","expires_in":600}"#), Some(600));
    assert_eq!(
        secs(r#"{"access_token":"a","expires_in":"3599"}"#),
        Some(3599)
    );
    assert_eq!(secs(r#"{"access_token":"a"}"#), None);
    // Unusable values read as absent (default_lifetime), and are named.
    let unusable = |b: &str| {
        let r = ok(b);
        assert_eq!(r.lifetime, None, "{b}");
        r.unusable_lifetime.expect(b)
    };
    assert_eq!(
        unusable(r#"{"access_token":"a","expires_in":"0"}"#),
        r#"expires_in: "0""#
    );
    assert_eq!(
        unusable(r#"{"access_token":"a","expires_in":0}"#),
        "expires_in: 0"
    );
    assert_eq!(
        unusable(r#"{"access_token":"a","expires_in":-5}"#),
        "expires_in: -5"
    );
    assert_eq!(
        unusable(r#"{"access_token":"a","expires_in":"soon"}"#),
        r#"expires_in: "soon""#
    );
    assert!(unusable(r#"{"access_token":"a","expires_in":{"x":1}}"#).contains("not quoted"));
    assert!(unusable(r#"{"access_token":"a","expires_on":"0"}"#).contains("not in the future"));
    assert!(ok(r#"{"access_token":"a"}"#).unusable_lifetime.is_none());
    let year = Some(MAX_LIFETIME.as_secs());
    assert_eq!(
        secs(r#"{"access_token":"a","expires_in":300000000000}"#),
        year
    );
    assert_eq!(secs(r#"{"access_token":"a","expires_in":1e30}"#), year);
    assert_eq!(secs(r#"{"access_token":"a","expires_in":"1e30"}"#), year);
    assert_eq!(
        secs(r#"{"access_token":"a","expires_on":"9999999999999"}"#),
        year
    );
}

#[test]
fn expires_on_as_epoch_string_or_date() {
    let secs = |b: &str| ok(b).lifetime.map(|d| d.as_secs());
    assert_eq!(
        secs(r#"{"access_token":"a","expires_on":"1800"}"#),
        Some(1800)
    );
    assert_eq!(secs(r#"{"access_token":"a","expires_on":60}"#), Some(60));
    assert_eq!(
        secs(r#"{"access_token":"a","expires_on":"1970-01-01T01:00:00Z"}"#),
        Some(3600)
    );
}

#[test]
fn secrets_leave_extra_and_rotation_is_optional() {
    let r = ok(
        r#"{"access_token":"a","refresh_token":"r","id_token":"i","token_type":"Bearer",
                   "instance_url":"https://x.my.salesforce.com","issued_at":"1700000000000"}"#,
    );
    assert_eq!(r.access_token.expose(), "a");
    assert_eq!(r.refresh_token.unwrap().expose(), "r");
    let keys: Vec<_> = r.extra.keys().cloned().collect();
    assert_eq!(keys, ["instance_url", "issued_at"]);
    assert!(ok(r#"{"access_token":"a"}"#).refresh_token.is_none());
}

#[test]
fn oauth_errors_are_classified_by_code_not_status() {
    assert!(
        err(
            400,
            r#"{"error":"invalid_grant","error_description":"Old refresh token used"}"#
        )
        .is_terminal()
    );
    assert!(err(401, r#"{"error":"invalid_client"}"#).is_terminal());
    // Zoho: an error with a 200.
    assert!(
        err(200, r#"{"error":"invalid_code"}"#)
            .to_string()
            .contains("invalid_code")
    );
    // HubSpot's own shape.
    assert!(
        err(
            400,
            r#"{"status":"BAD_REFRESH_TOKEN","message":"missing or invalid"}"#
        )
        .is_terminal()
    );
    let e = err(
        400,
        r#"{"error":"access_denied","error_description":"Rate limit exceeded"}"#,
    );
    assert!(!e.is_terminal());
    assert!(e.to_string().contains("Rate limit exceeded"), "{e}");
    assert!(!err(503, r#"{"message":"down"}"#).is_terminal());
}

#[test]
fn echoed_secrets_are_masked_and_odd_codes_not_quoted() {
    let body = r#"{"error":"invalid_request","error_description":"bad request: grant_type=refresh_token&refresh_token=rt-SECRET-1&client_secret=cs%2FSECRET"}"#;
    let e = err(400, body)
        .masked(&["rt-SECRET-1", "cs/SECRET"])
        .to_string();
    assert!(
        e.contains("invalid_request") && e.contains("[redacted]"),
        "{e}"
    );
    assert!(!e.contains("SECRET"), "{e}");
    let e = err(400, r#"{"error":"rt-SECRET-1 was refused"}"#).to_string();
    assert!(
        !e.contains("SECRET") && e.contains("not a plain word"),
        "{e}"
    );
    let e = err(400, r#"{"rt-SECRET-1": 1}"#)
        .masked(&["rt-SECRET-1"])
        .to_string();
    assert!(!e.contains("SECRET"), "{e}");
    let long = format!(
        r#"{{"error":"x","error_description":"{}"}}"#,
        "d".repeat(5000)
    );
    assert!(err(400, &long).to_string().len() < 400);
}

#[test]
fn every_rfc_6749_error_code_is_classified() {
    // Terminal: the credential or the client is refused; retrying cannot help.
    for code in ["invalid_grant", "invalid_client", "unauthorized_client"] {
        let e = err(400, &format!(r#"{{"error":"{code}"}}"#));
        assert!(e.is_terminal(), "{code}");
    }
    // Retried with backoff: passing conditions, and request errors a provider
    // may send while it is being reconfigured.
    for code in [
        "invalid_request",
        "unsupported_grant_type",
        "invalid_scope",
        "slow_down",
        "temporarily_unavailable",
        "access_denied",
        "server_error",
    ] {
        let e = err(400, &format!(r#"{{"error":"{code}"}}"#));
        assert!(!e.is_terminal(), "{code}");
        assert!(e.to_string().contains(code));
    }
    let e = parse(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":"slow_down"}"#,
        Some(std::time::Duration::from_secs(30)),
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));
}

#[test]
fn non_token_bodies_are_named_without_tokens() {
    let e = err(200, "").to_string();
    assert!(e.contains("200") && e.contains("empty body"), "{e}");
    let e = err(502, "<html><body>Bad Gateway rt=secret-rt</body></html>").to_string();
    assert!(
        e.contains("502") && e.contains("an HTML page") && !e.contains("secret-rt"),
        "{e}"
    );
    let e = err(
        200,
        r#"{"token_type":"bearer","refresh_token":"secret-rt"}"#,
    )
    .to_string();
    assert!(
        e.contains("no access_token") && !e.contains("secret-rt"),
        "{e}"
    );
    let e = err(200, r#"{"access_token": "trunc"#).to_string();
    assert!(
        e.contains("not a token response") && !e.contains("trunc"),
        "{e}"
    );
    let e = err(200, "access_token=form-encoded&expires=5").to_string();
    assert!(!e.contains("form-encoded"), "{e}");
    let long = "x".repeat(10_000);
    assert!(err(500, &long).to_string().len() < 300);
}
