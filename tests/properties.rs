//! Property tests for the code that reads untrusted input: configuration, token
//! responses, request targets, and the streaming link rewriter. The same entry
//! points are fuzzed by the targets in `fuzz/`.

use proptest::prelude::*;
use tokenproxy::fuzzing;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Failures are reported in the test output; no files are written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_parsing_never_panics(text in "\\PC{0,300}") {
        fuzzing::config(&text);
    }

    #[test]
    fn config_with_known_keys_never_panics(
        grant in "refresh_token|client_credentials|password|jwt_bearer|x",
        url in "(https?://[a-z.]{1,10}(:[0-9]{1,5})?/[a-z/{}.]{0,10})|\\PC{0,10}",
        prefix in "/?[a-z./%]{0,8}",
        inject in "(Authorization: Bearer \\{token\\})|(\\?[a-z_]{1,5}=\\{token\\})|\\PC{0,12}",
        dur in "[0-9]{1,4}(s|m|h|ms)|\\PC{0,4}",
    ) {
        let text = format!(
            "[tokens.t]\ngrant = \"{grant}\"\ntoken_url = \"{url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\nrefresh_before = \"{dur}\"\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{url}\"\ntoken = \"t\"\ninject = \"{inject}\"\n"
        );
        fuzzing::config(&text);
    }

    #[test]
    fn framing_verdicts_do_not_depend_on_where_reads_end(
        cut in any::<u8>(),
        requests in proptest::collection::vec(
            (
                "GET|POST|PUT",
                proptest::option::of(0u8..20),
                any::<bool>(),
                proptest::collection::vec(1u8..12, 0..3),
            ),
            1..4,
        ),
    ) {
        // Well-formed pipelines of fixed, chunked and ambiguous requests.
        let mut stream = vec![cut];
        for (method, length, chunked, chunks) in &requests {
            let mut head = format!("{method} /x HTTP/1.1\r\nHost: x\r\n");
            if let Some(n) = length {
                head += &format!("Content-Length: {n}\r\n");
            }
            if *chunked {
                head += "Transfer-Encoding: chunked\r\n";
            }
            head += "\r\n";
            stream.extend_from_slice(head.as_bytes());
            if *chunked {
                for c in chunks {
                    stream.extend_from_slice(format!("{c:x}\r\n{}\r\n", "a".repeat(*c as usize)).as_bytes());
                }
                stream.extend_from_slice(b"0\r\n\r\n");
            } else if let Some(n) = length {
                stream.extend(std::iter::repeat_n(b'b', *n as usize));
            }
        }
        fuzzing::framing(&stream);
    }

    #[test]
    fn framing_never_panics_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::framing(&data);
    }

    #[test]
    fn token_response_parsing_never_panics(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzzing::token_response(status, &body);
    }

    #[test]
    fn token_response_fields_of_any_type(
        access in proptest::option::of("\\PC{0,20}"),
        expires in proptest::option::of(prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "\"\\PC{0,10}\"".prop_map(|s| s),
        ]),
        error in proptest::option::of("[a-z_]{0,20}"),
    ) {
        let mut fields = Vec::new();
        if let Some(a) = access { fields.push(format!("\"access_token\": {}", serde_json::Value::from(a))); }
        if let Some(e) = expires { fields.push(format!("\"expires_in\": {e}")); }
        if let Some(e) = error { fields.push(format!("\"error\": \"{e}\"")); }
        fuzzing::token_response(200, format!("{{{}}}", fields.join(",")).as_bytes());
    }

    #[test]
    fn routes_never_leave_their_base(path in "/[a-zA-Z0-9./%_~!$&'()*+,;=:@-]{0,40}", query in proptest::option::of("[a-z=&%.]{0,20}")) {
        let target = match query { Some(q) => format!("{path}?{q}"), None => path };
        if let Some(upstream) = fuzzing::route(&target) {
            // The two routes: /ex/ → api.example.com/api/, and / kept whole → other.example.com.
            prop_assert!(
                upstream.starts_with("https://api.example.com/api/") || upstream.starts_with("https://other.example.com/"),
                "{target} -> {upstream}"
            );
            let path = upstream.split('?').next().unwrap_or("");
            let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy().replace('\\', "/");
            prop_assert!(!decoded.split('/').any(|s| s == ".." || s == "."), "{target} -> {upstream}");
        }
    }

    #[test]
    fn absolute_form_never_reaches_an_unconfigured_host(host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?", path in "/[a-z./]{0,20}") {
        if let Some(upstream) = fuzzing::route(&format!("http://{host}{path}")) {
            prop_assert!(
                upstream.starts_with("https://api.example.com/") || upstream.starts_with("https://other.example.com/"),
                "{host}{path} -> {upstream}"
            );
        }
    }

    #[test]
    fn streaming_rewrite_equals_rewriting_the_whole(
        parts in proptest::collection::vec(prop_oneof![
            Just("https://api.example.com/v1/".to_owned()),
            Just("https:\\/\\/api.example.com\\/v1\\/".to_owned()),
            Just("https://api.example.com/v".to_owned()),
            "[a-z\"{}:,/ ]{0,12}",
        ], 0..12),
        cuts in proptest::collection::vec(0usize..200, 0..8),
    ) {
        let body = parts.concat();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (streamed, whole) = fuzzing::rewrite(body.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&whole));
    }

    #[test]
    fn paging_links_do_not_depend_on_where_the_body_is_cut(
        parts in proptest::collection::vec(prop_oneof![
            Just("https://api.example.com/v1/".to_owned()),
            Just("https:\\/\\/api.example.com\\/v1\\/".to_owned()),
            Just("https://api.example.com/v".to_owned()),
            Just("{\"__next\":\"".to_owned()),
            Just("\"next\":{\"link\":\"".to_owned()),
            Just("<link rel=\"next\" href=\"".to_owned()),
            "[a-z\"{}\\[\\]:,/<>= \\\\]{0,12}",
        ], 0..12),
        cuts in proptest::collection::vec(0usize..200, 0..8),
    ) {
        let body = parts.concat();
        let mut cuts = cuts;
        cuts.sort_unstable();
        for (streamed, whole) in fuzzing::paging(body.as_bytes(), &cuts) {
            prop_assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&whole));
        }
    }
}
