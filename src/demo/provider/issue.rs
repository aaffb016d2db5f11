//! Issuing tokens, as providers do: rotation with reuse detection, the
//! lifetime's shapes, the answer's fields.

use super::checks::verify_jwt;
use super::*;

impl Provider {
    /// Checks the client and the grant, and issues tokens.
    pub(super) fn issue(&self, received: &mut Received) -> Response<FakeBody> {
        let field = |k: &str| received.field(k).map(str::to_owned);
        let mut s = self.lock();
        let opts = s.opts.clone();
        for (k, v) in &opts.require {
            if field(k).as_deref() != Some(v.as_str()) {
                drop(s);
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("{k} is required"),
                );
            }
        }
        if let Err(why) = check_client(&opts, received) {
            drop(s);
            return self.error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
        }
        let mut response = Map::new();
        match field("grant_type").as_deref() {
            Some("refresh_token") => {
                let presented = field("refresh_token").unwrap_or_default();
                if s.refresh_spent.contains(&presented) {
                    s.reuse_detected += 1;
                    s.chain_revoked = true;
                    s.access_current = None;
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "refresh token reused; every token of the grant is revoked",
                    );
                }
                if s.chain_revoked || s.refresh_current.as_deref() != Some(presented.as_str()) {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown refresh token",
                    );
                }
                if s.last_issue
                    .is_some_and(|t| t.elapsed() < opts.min_interval)
                {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "access_denied",
                        "Rate limit exceeded: access_token not expired",
                    );
                }
                if opts.rotate {
                    s.refresh_spent.insert(presented);
                    let next = format!("demo-rt-{}-{:016x}", s.issued + 1, fastrand::u64(..));
                    s.refresh_current = Some(next.clone());
                    s.all_tokens.push(next.clone());
                    s.rotations.push((Instant::now(), next.clone()));
                    response.insert("refresh_token".into(), next.into());
                } else if opts.echo_refresh_token {
                    response.insert("refresh_token".into(), presented.into());
                }
            }
            Some("client_credentials") => {}
            Some("authorization_code") => {
                let code = field("code").unwrap_or_default();
                let verifier = field("code_verifier").unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
                match s.codes.remove(&code) {
                    Some((want, redirect))
                        if want == challenge
                            && Some(redirect.as_str()) == field("redirect_uri").as_deref() => {}
                    _ => {
                        drop(s);
                        return self.error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "bad code, redirect_uri or code_verifier",
                        );
                    }
                }
                // A login starts a new chain.
                let rt = format!("demo-rt-login-{:016x}", fastrand::u64(..));
                s.refresh_current = Some(rt.clone());
                s.chain_revoked = false;
                s.all_tokens.push(rt.clone());
                response.insert("refresh_token".into(), rt.into());
                response.insert("scope".into(), "read write".into());
            }
            Some("password") => {
                if field("username").as_deref() != Some(opts.username.as_str())
                    || field("password").as_deref() != Some(opts.password.as_str())
                {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "wrong username or password",
                    );
                }
            }
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                match verify_jwt(&opts, field("assertion").as_deref()) {
                    Ok(claims) => received.claims = Some(claims),
                    Err(why) => {
                        drop(s);
                        return self.error(StatusCode::BAD_REQUEST, "invalid_grant", &why);
                    }
                }
            }
            other => {
                drop(s);
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("grant_type {other:?}"),
                );
            }
        }
        if opts.expect_auth == ExpectAuth::PrivateKeyJwt {
            received.claims = verify_jwt(&opts, received.field("client_assertion")).ok();
        }
        s.issued += 1;
        s.last_issue = Some(Instant::now());
        let access = format!("demo-at-{}-{:016x}", s.issued, fastrand::u64(..));
        s.access_current = Some((access.clone(), Instant::now() + opts.lifetime));
        s.all_tokens.push(access.clone());
        response.insert("access_token".into(), access.into());
        response.insert("token_type".into(), "bearer".into());
        let secs = opts.stated_lifetime.unwrap_or(opts.lifetime).as_secs_f64();
        match opts.expires_in {
            ExpiresIn::String => {
                response.insert("expires_in".into(), secs.to_string().into());
            }
            ExpiresIn::Number => {
                response.insert("expires_in".into(), json!(secs));
            }
            ExpiresIn::Absent => {}
        }
        let api_base = self.api_url.trim_end_matches('/');
        for (k, v) in &opts.extra {
            let v = match v {
                Value::String(t) => Value::String(t.replace("{api}", api_base)),
                other => other.clone(),
            };
            response.insert(k.clone(), v);
        }
        json_resp(StatusCode::OK, Value::Object(response))
    }
}
