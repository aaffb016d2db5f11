//! `tokenproxy check`: the shipped examples pass, and bad configurations fail with
//! exit code 2 and a message that names the file, the key and the fix.

use std::path::Path;
use std::process::{Command, Output};

fn check(path: &Path, env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenproxy"))
        .args(["check", "-c"])
        .arg(path)
        .env_remove("TOKENPROXY_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run tokenproxy check")
}

/// The `{ env = "NAME" }` references of a config file.
fn env_refs(text: &str) -> Vec<String> {
    text.split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_example_config_passes_check() {
    let mut seen = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let env: Vec<_> = env_refs(&text)
            .into_iter()
            .map(|k| (k, "example-value".to_owned()))
            .collect();
        let out = check(&path, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("routes:"), "{stdout}");
        assert!(
            !stdout.contains("example-value"),
            "check printed a secret: {stdout}"
        );
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} example configs");
}

/// The configurations shipped under deploy/ (Kubernetes, systemd) are valid: their
/// secret files, which exist only where they are deployed, are stood in for.
#[test]
fn every_deploy_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut configs = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                configs.push(path);
            }
        }
    }
    assert!(configs.len() >= 3, "{configs:?}");
    let secrets = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["tokenproxy.etl.svc".into()]).unwrap();
    for path in configs {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rewritten = text.clone();
        for reference in text.split("file = \"").skip(1) {
            let file = reference.split('"').next().unwrap();
            let stand_in = secrets
                .path()
                .join(file.trim_start_matches('/').replace('/', "_"));
            let value = if file.ends_with("/url") {
                "postgres://tokenproxy@127.0.0.1:1/etl".to_owned()
            } else if file.ends_with("tls.crt") {
                pair.cert.pem()
            } else if file.ends_with("tls.key") {
                pair.signing_key.serialize_pem()
            } else {
                // Distinct per file, and long enough for a caller key.
                format!("example-value-for-{}", file.replace('/', "-"))
            };
            std::fs::write(&stand_in, value).unwrap();
            rewritten = rewritten.replace(file, stand_in.to_str().unwrap());
        }
        let copy = secrets.path().join("tokenproxy.toml");
        std::fs::write(&copy, rewritten).unwrap();
        let out = check(&copy, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Exit 2 is an invalid configuration; a store that cannot be reached from
        // here (the shared one) is exit 1 after the configuration was accepted.
        assert!(
            out.status.code() != Some(2) && stdout.contains(": OK"),
            "{}: {stdout}{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("/exact/"), "{stdout}");
        // An admin port beyond loopback carries a key.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains("has no admin_key") && !stderr.contains("has no admin_key"),
            "{}: {stdout}{stderr}",
            path.display()
        );
    }
}

#[test]
fn every_preset_has_an_example() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let all: String = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for preset in tokenproxy::config::PRESETS {
        assert!(
            all.contains(&format!("preset = \"{}\"", preset.name)),
            "no example for preset {}",
            preset.name
        );
    }
}

const GOOD: &str = r#"
[tokens.api]
grant = "refresh_token"
token_url = "https://id.example.com/oauth/token"
client_id = "my-client"
client_secret = "literal-client-secret"
refresh_token = "literal-refresh-token"

[[routes]]
prefix = "/api/"
upstream = "https://api.example.com/v1/"
token = "api"
"#;

fn check_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = check(&path, &[]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn check_prints_routes_with_secrets_redacted_and_warns_about_literals() {
    let (code, out) = check_text(GOOD);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/api/") && out.contains("https://api.example.com/v1/"),
        "{out}"
    );
    assert!(out.contains("Authorization: Bearer {token}"), "{out}");
    assert!(
        !out.contains("literal-client-secret") && !out.contains("literal-refresh-token"),
        "{out}"
    );
    assert!(out.contains("literal [redacted]"), "{out}");
    assert!(
        out.contains("warning:") && out.contains("tokens.api.client_secret"),
        "{out}"
    );
}

#[test]
fn bad_configs_exit_2_naming_file_key_and_fix() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "grant = \"refresh_token\"",
            "grant = \"refresh_token\"\nrefrsh_before = \"30s\"",
            &["unknown field", "refrsh_before"],
        ),
        (
            "client_secret = \"literal-client-secret\"",
            "client_secret = { env = \"TOKENPROXY_TEST_UNSET_VAR\" }",
            &[
                "tokens.api.client_secret",
                "TOKENPROXY_TEST_UNSET_VAR",
                "fix:",
            ],
        ),
        (
            "https://id.example.com/oauth/token",
            "http://id.example.com/oauth/token",
            &["tokens.api.token_url", "https", "fix:"],
        ),
        (
            "token = \"api\"",
            "token = \"nope\"",
            &["routes[0].token", "nope", "[\"api\"]"],
        ),
        (
            "prefix = \"/api/\"",
            "prefix = \"/api/\"\ninject = \"Authorization: Bearer\"",
            &["routes[0].inject", "{token}"],
        ),
        (
            "prefix = \"/api/\"",
            "prefix = \"api/\"",
            &["routes[0].prefix", "/api/"],
        ),
        (
            "prefix = \"/api/\"",
            "prefix = \"/api/\"\nrewrite_links = \"next\"",
            &[
                "routes[0].rewrite_links",
                "\"next\"",
                "\"pagination\"",
                "\"all\"",
                "\"off\"",
            ],
        ),
        (
            "grant = \"refresh_token\"",
            "grant = \"implicit\"",
            &[
                "tokens.api.grant",
                "implicit",
                "refresh_token, client_credentials, password, jwt_bearer",
            ],
        ),
        (
            "[tokens.api]",
            "[listen]\nproxy = \"localhost\"\n[tokens.api]",
            &["listen.proxy", "127.0.0.1:8080"],
        ),
        (
            "[tokens.api]",
            "[proxy]\nconnect_timeout = \"10 parsecs\"\n[tokens.api]",
            &["connect_timeout"],
        ),
        (
            "[tokens.api]",
            "[store]\nkind = \"redis\"\n[tokens.api]",
            &["store.url", "a redis store needs a URL", "redis://"],
        ),
        (
            "[tokens.api]",
            "[store]\nkind = \"file\"\nprefix = \"x:\"\n[tokens.api]",
            &["store.prefix", "kind = \"redis\""],
        ),
        (
            "[tokens.api]",
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nprefix = \"two words\"\n[tokens.api]",
            &["store.prefix", "without spaces"],
        ),
        (
            "[tokens.api]",
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nlease = \"5s\"\n[tokens.api]",
            &["store.lease", "timeout", "raise store.lease"],
        ),
        (
            "[tokens.api]",
            "[store]\nkind = \"mongodb\"\n[tokens.api]",
            &["store.kind", "mongodb", "\"redis\""],
        ),
        (
            "[tokens.api]",
            "[intercept]\n[tokens.api]",
            &["intercept", "needs a CA", "ca init"],
        ),
        (
            "[tokens.api]",
            "[intercept]\nca = \"yes\"\n[tokens.api]",
            &["intercept.ca", "`yes`", "ca = \"auto\""],
        ),
        (
            "[tokens.api]",
            "[intercept]\nca_cert = { file = \"/x/ca.pem\" }\nca_key = \"-----BEGIN PRIVATE KEY-----\"\n[tokens.api]",
            &["intercept.ca_key", "readable only by tokenproxy"],
        ),
        (
            "[tokens.api]",
            "[intercept]\nca = \"auto\"\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n[tokens.api]",
            &["intercept.ca", "shared store", "same CA"],
        ),
    ];
    for (from, to, expect) in cases {
        assert!(GOOD.contains(from), "{from}");
        let (code, out) = check_text(&GOOD.replacen(from, to, 1));
        assert_eq!(code, 2, "{to}: {out}");
        assert!(out.contains("bad.toml"), "the file is named: {out}");
        for e in *expect {
            assert!(out.contains(e), "{to}: expected `{e}` in: {out}");
        }
    }
    let (code, out) = check_text("");
    assert_eq!(code, 2);
    assert!(out.contains("[[routes]]"), "{out}");
}

/// A proxy listener beyond loopback needs TLS and keys, or `insecure_listen = true`
/// written on purpose; it is warned about either way.
#[test]
fn listening_beyond_loopback_needs_tls_and_keys_or_insecure_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let pair = rcgen::generate_simple_self_signed(vec!["proxy.internal".into()]).unwrap();
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls_cert = {{ file = {:?} }}\ntls_key = {{ file = {:?} }}\n",
        cert, key
    );
    let keyed = "client_key = { env = \"PATH\" }\n";
    let listen = |extra: &str| format!("[listen]\nproxy = \"0.0.0.0:8080\"\n{extra}{GOOD}");
    for (extra, missing) in [
        (String::new(), "without TLS or keys"),
        (keyed.to_owned(), "without TLS"),
        (tls.clone(), "without keys"),
    ] {
        let (code, out) = check_text(&listen(&extra));
        assert_eq!(code, 2, "{extra}: {out}");
        assert!(
            out.contains("listen.proxy")
                && out.contains(missing)
                && out.contains("insecure_listen"),
            "{extra}: {out}"
        );
        let (code, out) = check_text(&listen(&format!("{extra}insecure_listen = true\n")));
        assert_eq!(code, 0, "{extra}: {out}");
        assert!(out.contains("warning:") && out.contains(missing), "{out}");
    }
    let (code, out) = check_text(&listen(&format!("{tls}{keyed}")));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("reachable beyond this host"), "{out}");
    let (_, out) = check_text(GOOD);
    assert!(!out.contains("reachable beyond this host"), "{out}");

    // A key that is not the certificate's, half a pair, no PEM: named.
    let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    for (extra, expect) in [
        (
            format!("tls_cert = {{ file = {cert:?} }}\ntls_key = {{ file = {other_key:?} }}\n"),
            "listen.tls_key",
        ),
        (
            format!("tls_cert = {{ file = {cert:?} }}\n"),
            "tls_cert and tls_key come together",
        ),
        (
            format!("tls_cert = {{ file = {key:?} }}\ntls_key = {{ file = {key:?} }}\n"),
            "no PEM certificate",
        ),
    ] {
        let (code, out) = check_text(&format!("[listen]\n{extra}{GOOD}"));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(expect), "{expect}: {out}");
        assert!(!out.contains("PRIVATE KEY"), "{out}");
    }
}

/// `[[callers]]`: names, keys and tokens are checked, and a caller list excludes
/// `client_key`; sinks and vending paths too.
#[test]
fn callers_sinks_and_own_paths_are_checked() {
    let caller = |name: &str, key: &str, tokens: &str| {
        format!("\n[[callers]]\nname = \"{name}\"\nkey = \"{key}\"\ntokens = [{tokens}]\n")
    };
    let good = format!("{GOOD}{}", caller("adf", "0123456789abcdef-adf", "\"api\""));
    let (code, out) = check_text(&good);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("0123456789abcdef-adf"), "{out}");
    for (text, expect) in [
        (caller("adf", "short", "\"api\""), "at least 16"),
        (
            caller("a b", "0123456789abcdef-adf", "\"api\""),
            "not a caller name",
        ),
        (
            caller("adf", "0123456789abcdef-adf", "\"nope\""),
            "no token is named `nope`",
        ),
        (caller("adf", "0123456789abcdef-adf", ""), "is empty"),
        (
            format!(
                "{}{}",
                caller("adf", "0123456789abcdef-adf", "\"api\""),
                caller("adf", "0123456789abcdef-two", "\"api\"")
            ),
            "names two callers",
        ),
    ] {
        let (code, out) = check_text(&format!("{GOOD}{text}"));
        assert_eq!(code, 2, "{text}: {out}");
        assert!(out.contains(expect), "{expect}: {out}");
        assert!(!out.contains("0123456789abcdef"), "{out}");
    }
    let both = format!("[listen]\nclient_key = \"0123456789abcdef-one\"\n{good}");
    let (code, out) = check_text(&both);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("listen.client_key") && out.contains("[[callers]]"),
        "{out}"
    );

    let with_token = |extra: &str| GOOD.replace("[[routes]]", &format!("{extra}\n[[routes]]"));
    for (extra, expect) in [
        (
            "[[tokens.api.sinks]]\npath = \"/run/x/api.token\"\nmode = \"0666\"\n",
            "not a mode a token file may have",
        ),
        (
            "[[tokens.api.sinks]]\npath = \"/run/x/api.token\"\nformat = \"yaml\"\n",
            "`yaml` is not one of token, header, json",
        ),
        (
            "[[tokens.api.sinks]]\npath = \"/run/../api.token\"\n",
            "not a file path",
        ),
        (
            "[[tokens.api.sinks]]\npath = \"/run/x/a\"\n[[tokens.api.sinks]]\npath = \"/run/x/a\"\n",
            "the file of two sinks",
        ),
    ] {
        let (code, out) = check_text(&with_token(extra));
        assert_eq!(code, 2, "{extra}: {out}");
        assert!(out.contains(expect), "{expect}: {out}");
    }
    let fine = "vend = true\n[[tokens.api.sinks]]\npath = \"/run/x/api.json\"\nformat = \"json\"\nmode = \"0640\"\n";
    let (code, out) = check_text(&with_token(fine));
    assert_eq!(code, 0, "{out}");

    let own = GOOD.replace("prefix = \"/api/\"", "prefix = \"/tokenproxy/api\"");
    let (code, out) = check_text(&own);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("/tokenproxy/") && out.contains("routes[0].prefix"),
        "{out}"
    );
}

/// A syntax error on a line with a literal secret names the line and the key but
/// masks every value (toml's own message quotes the line).
#[test]
fn syntax_errors_mask_the_values_they_quote() {
    for (from, to) in [
        (
            "client_secret = \"literal-client-secret\"",
            "client_secret = \"literal-client-secret\" x",
        ),
        (
            "client_secret = \"literal-client-secret\"",
            "client_secret = \"literal-client-secret",
        ),
        (
            "refresh_token = \"literal-refresh-token\"",
            "refresh_token = 'literal-refresh-token' 'x'",
        ),
        (
            "[[routes]]",
            "[proxy]\nidle_timeout = \"literal-client-secret\"\n[[routes]]",
        ),
    ] {
        let (code, out) = check_text(&GOOD.replacen(from, to, 1));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("line "), "{out}");
        assert!(
            !out.contains("literal-client-secret") && !out.contains("literal-refresh-token"),
            "a secret in the message: {out}"
        );
    }
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let out = check(Path::new("/nonexistent/tokenproxy.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tokenproxy.toml"));
}

#[test]
fn debug_output_of_configuration_and_token_records_is_redacted() {
    let config = tokenproxy::config::Config::parse(GOOD, "good.toml".as_ref()).unwrap();
    let debug = format!("{config:?}");
    assert!(debug.contains("tokens"), "{debug}");
    for secret in ["literal-client-secret", "literal-refresh-token"] {
        assert!(!debug.contains(secret), "Debug of Config shows {secret}");
    }
    let record = tokenproxy::store::StoredToken {
        version: 1,
        generation: 1,
        access_token: Some(tokenproxy::secret::Secret::new("at-visible?")),
        refresh_token: Some(tokenproxy::secret::Secret::new("rt-visible?")),
        issued_at_ms: 0,
        expires_at_ms: 0,
        extra: Default::default(),
    };
    let debug = format!("{record:?}");
    assert!(
        !debug.contains("visible?") && debug.contains("[redacted]"),
        "{debug}"
    );
}

/// A secret used as a header value that holds a line break is refused by `check`
/// (it used to pass, and every token request then failed as "unreachable").
#[test]
fn a_header_secret_with_a_line_break_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        r#"
[store]
path = "/nonexistent-tokenproxy-state"
[tokens.t]
grant = "client_credentials"
token_url = "https://login.example.test/token"
client_id = "id"
client_secret = { env = "TP_SECRET" }
headers = { "X-Api-Key" = { env = "TP_KEY" } }
[[routes]]
prefix = "/t/"
upstream = "https://api.example.test/"
token = "t"
"#,
    )
    .unwrap();
    let env = |key: &str| {
        vec![
            ("TP_SECRET".to_owned(), "s3cret-value".to_owned()),
            ("TP_KEY".to_owned(), key.to_owned()),
        ]
    };
    let out = check(&path, &env("abc\ndef"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("headers.X-Api-Key") && err.contains("line break"),
        "{err}"
    );
    assert!(!err.contains("abc"), "the value is not quoted: {err}");
    let out = check(&path, &env("abcdef"));
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A route's rate-limit keys: written limits, the Exact Online preset's, and
/// what is refused.
#[test]
fn rate_limits_are_checked_and_described() {
    let with_route = |extra: &str| format!("{GOOD}{extra}\n");
    let (code, out) = check_text(&with_route(
        "limits = [\"60/1m\", \"5000/1d\", \"10/s\"]\nmax_wait = \"45s\"\nquota_key = \"path:2\"",
    ));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rate limits: 60/1m, 5000/1day, 10/1s")
            && out.contains("quota per path segment 2")
            && out.contains("waits up to 45s"),
        "{out}"
    );
    for (extra, expect) in [
        ("limits = [\"sixty\"]", "`sixty` is not a limit"),
        ("limits = [\"0/1m\"]", "`0/1m` is not a limit"),
        ("limits = [\"5/10ms\"]", "`5/10ms` is not a limit"),
        ("quota_key = \"division\"", "`division` is not a quota key"),
        ("quota_key = \"path:0\"", "`path:0` is not a quota key"),
        ("max_waiting = 0", "max_waiting"),
        ("max_wait = \"2h\"", "longer than an hour"),
    ] {
        let (code, out) = check_text(&with_route(extra));
        assert_eq!(code, 2, "{extra}: {out}");
        assert!(out.contains(expect), "{expect}: {out}");
    }
    // The Exact Online preset's documented limits, per division.
    let exact = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/exact-online.toml"
    ))
    .unwrap();
    let out = check(
        &{
            let dir = tempfile::tempdir().unwrap().keep();
            let path = dir.join("exact.toml");
            std::fs::write(&path, exact).unwrap();
            path
        },
        &[
            ("EXACT_CLIENT_ID".into(), "id".into()),
            ("EXACT_CLIENT_SECRET".into(), "secret".into()),
            ("EXACT_REFRESH_TOKEN".into(), "refresh".into()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rate limits: 60/1m, 5000/1day")
            && stdout.contains("quota per path segment 2"),
        "{stdout}"
    );
}
