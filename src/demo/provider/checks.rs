//! How the fake provider checks a client: its authentication and its signed
//! assertions.

use std::time::SystemTime;

use base64::Engine;
use http::header::AUTHORIZATION;
use serde_json::Value;

use super::{ExpectAuth, ProviderOptions, Received};

/// RFC 6749 §2.3.1 and RFC 7523 §2.2, as the options expect.
pub(super) fn check_client(opts: &ProviderOptions, r: &Received) -> Result<(), String> {
    let basic = r
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b64| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (i, p) = raw.split_once(':').unwrap_or((&raw, ""));
            let dec = |x: &str| -> String {
                form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (dec(i), dec(p))
        });
    let in_form = (r.field("client_id"), r.field("client_secret"));
    let good = |id: &str, secret: &str| id == opts.client_id && secret == opts.client_secret;
    let by_basic = basic.as_ref().is_some_and(|(i, p)| good(i, p));
    let by_form = matches!(in_form, (Some(i), Some(p)) if good(i, p));
    if basic.is_some() && in_form.1.is_some() {
        return Err("two client authentication methods at once".into());
    }
    let ok = match opts.expect_auth {
        ExpectAuth::Post => by_form,
        ExpectAuth::Basic => by_basic,
        ExpectAuth::Secret => by_form || by_basic,
        ExpectAuth::Nothing => basic.is_none() && in_form.1.is_none(),
        ExpectAuth::PrivateKeyJwt => {
            r.field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && verify_jwt(opts, r.field("client_assertion"))
                    .is_ok_and(|c| c["iss"] == opts.client_id && c["sub"] == opts.client_id)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "client authentication failed (expected {:?})",
            opts.expect_auth
        ))
    }
}

/// Checks an assertion's signature and times; returns its claims.
pub(super) fn verify_jwt(opts: &ProviderOptions, jwt: Option<&str>) -> Result<Value, String> {
    let key = opts
        .verify_key
        .as_ref()
        .ok_or("no key to verify assertions")?;
    let jwt = jwt.ok_or("no assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("not a JWT".into());
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(sig).map_err(|_| "bad signature encoding")?;
    ring::signature::UnparsedPublicKey::new(key.alg, &key.public_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|_| "bad claims")?)
        .map_err(|_| "bad claims")?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp <= now || exp > iat + 3600 || iat > now + 60 {
        return Err("Invalid JWT: Token must be a short-lived token".into());
    }
    Ok(claims)
}
