//! The fake provider's API: it accepts only the current, unexpired access token,
//! in the form the options name, and echoes what it received.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::provider::{ApiAuth, Provider};
use super::serve::{FakeBody, json_resp, query_number};

impl Provider {
    pub(super) async fn api(&self, req: Request<Incoming>) -> Response<FakeBody> {
        self.api_requests.fetch_add(1, Ordering::SeqCst);
        let limited = {
            let mut s = self.lock();
            let sim = s.opts.rate_limit;
            sim.map(|sim| s.quotas.call(&sim, req.uri().path()))
        };
        let Some((headers, over)) = limited else {
            return self.answer(req).await;
        };
        let mut resp = if over {
            json_resp(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": {"value": "API rate limit exceeded"}}}),
            )
        } else {
            self.answer(req).await
        };
        resp.headers_mut().extend(headers);
        resp
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<FakeBody> {
        if !self.authorized(&req) {
            let mut r = json_resp(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}));
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return r;
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if path.ends_with("/download") {
            let mut r = Response::new(FakeBody::Zeros(query_number(&parts.uri, "bytes")));
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            return r;
        }
        if path.ends_with("/slow") {
            let ms = query_number(&parts.uri, "ms");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return json_resp(StatusCode::OK, json!({"slept_ms": ms}));
        }
        if path.ends_with("/hold") {
            let mut released = self.held.subscribe();
            let _ = released.wait_for(|open| *open).await;
            return json_resp(StatusCode::OK, json!({"held": true}));
        }
        if let Some(resp) = self.pages(&parts.uri).await {
            return resp;
        }
        if path.ends_with("/bigjson") {
            return self.big_json(query_number(&parts.uri, "bytes"));
        }
        if path.ends_with("/text-with-url") {
            let mut r = Response::new(FakeBody::full(format!(
                "see {}pages?page=2 for more\n",
                self.api_url
            )));
            r.headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
            return r;
        }
        if path.ends_with("/cookie") {
            let mut r = json_resp(StatusCode::OK, json!({"cookie": "set"}));
            r.headers_mut().insert(
                http::header::SET_COOKIE,
                http::HeaderValue::from_static("session=abc123; Path=/; HttpOnly"),
            );
            return r;
        }
        if path.ends_with("/redirect") {
            let mut r = Response::new(FakeBody::full(""));
            *r.status_mut() = StatusCode::FOUND;
            if let Ok(v) = format!("{}landed?from=redirect", self.api_url).parse() {
                r.headers_mut().insert(LOCATION, v);
            }
            return r;
        }
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let auth_header = match &self.lock().opts.api_auth {
            ApiAuth::Header { name, .. } => Some(name.clone()),
            ApiAuth::Query { .. } => None,
        };
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != auth_header.as_deref())
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        json_resp(
            StatusCode::OK,
            json!({
                // What a caller of the demo wants to see: the request carried the
                // current access token, though the caller sent none.
                "authorized": "yes: the request carried the current access token (added by tokenproxy, not shown)",
                "method": parts.method.as_str(),
                "path": path,
                "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body_len": body.len(),
                "body": String::from_utf8_lossy(&body),
            }),
        )
    }

    /// Paginated answers with absolute next links, in the shapes real APIs use:
    /// `…/pages?page=N&last=M&style=S` (S: plain, escaped, split, gzip, deflate,
    /// br, xml, link, hubspot, exact) and Salesforce's `…/query` then
    /// `…/query/01g-N` with `nextRecordsUrl` as an absolute path.
    async fn pages(&self, uri: &http::Uri) -> Option<Response<FakeBody>> {
        let path = uri.path();
        let (n, last, style) = if path.ends_with("/pages") {
            let q = |k: &str| {
                uri.query()
                    .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(key, _)| key == k))
                    .map(|(_, v)| v.into_owned())
            };
            let style = q("style").unwrap_or_else(|| "plain".into());
            (
                query_number(uri, "page").max(1),
                query_number(uri, "last").max(1),
                style,
            )
        } else if let Some(rest) = path.strip_prefix("/services/data/v59.0/query") {
            let n = rest
                .strip_prefix("/01g-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            (n, 3, "salesforce".to_owned())
        } else {
            return None;
        };
        let base = &self.api_url;
        let next =
            (n < last).then(|| format!("{base}pages?page={}&last={last}&style={style}", n + 1));
        let items: Vec<u64> = (n * 10..n * 10 + 10).collect();
        let json_ct = http::HeaderValue::from_static("application/json; charset=utf-8");
        let (body, content_type, link) = match style.as_str() {
            "escaped" => {
                let next = next.map(|l| l.replace('/', "\\/"));
                (
                    json!({"page": n, "value": items, "@odata.nextLink": next})
                        .to_string()
                        .replace("\\\\/", "\\/"),
                    json_ct,
                    None,
                )
            }
            "xml" => {
                let link = next
                    .map(|l| format!("<link rel=\"next\" href=\"{}\"/>", l.replace('&', "&amp;")))
                    .unwrap_or_default();
                let body = format!(
                    "<?xml version=\"1.0\"?><feed xmlns=\"http://www.w3.org/2005/Atom\"><entry><id>{base}items({n})</id><link rel=\"edit\" href=\"{base}items({n})\"/></entry>{link}</feed>"
                );
                (
                    body,
                    http::HeaderValue::from_static("application/atom+xml"),
                    None,
                )
            }
            "link" => (
                json!({"page": n, "value": items}).to_string(),
                json_ct,
                next,
            ),
            "hubspot" => {
                let paging = next.map(|l| json!({"next": {"after": n + 1, "link": l}}));
                (
                    json!({"results": items, "paging": paging}).to_string(),
                    json_ct,
                    None,
                )
            }
            // Exact Online's OData v2: each record's `__metadata.uri` is data that
            // must stay as written; `__next` is the page link.
            "exact" => {
                let results: Vec<_> = items
                    .iter()
                    .map(|i| {
                        json!({
                            "__metadata": {"uri": format!("{base}crm/Accounts(guid'{i}')"), "type": "Exact.Web.Api.Models.CRM.Account"},
                            "ID": i,
                            "Name": format!("Account {i}"),
                        })
                    })
                    .collect();
                let mut d = json!({"results": results});
                if let Some(next) = next {
                    d["__next"] = json!(next);
                }
                (json!({"d": d}).to_string(), json_ct, None)
            }
            "salesforce" => {
                let next = (n < last).then(|| format!("/services/data/v59.0/query/01g-{}", n + 1));
                (json!({"totalSize": 30, "done": next.is_none(), "nextRecordsUrl": next, "records": items}).to_string(), json_ct, None)
            }
            _ => (
                json!({"page": n, "value": items, "@odata.nextLink": next}).to_string(),
                json_ct,
                None,
            ),
        };
        let coding = matches!(style.as_str(), "gzip" | "deflate" | "br").then_some(style.as_str());
        let bytes = Bytes::from(match coding {
            Some(c) => compress(c, body.as_bytes()).await,
            None => body.into_bytes(),
        });
        let mut r = Response::new(if style == "split" {
            FakeBody::Chunks(bytes.chunks(5).map(Bytes::copy_from_slice).collect())
        } else {
            FakeBody::Full(Some(bytes))
        });
        r.headers_mut().insert(CONTENT_TYPE, content_type);
        if let Some(c) = coding.and_then(|c| http::HeaderValue::try_from(c).ok()) {
            r.headers_mut().insert(http::header::CONTENT_ENCODING, c);
        }
        if let Some(l) =
            link.and_then(|l| http::HeaderValue::try_from(format!("<{l}>; rel=\"next\"")).ok())
        {
            r.headers_mut().insert(http::header::LINK, l);
        }
        Some(r)
    }

    /// About `bytes` of JSON, made of absolute item URLs, generated as it goes.
    fn big_json(&self, bytes: u64) -> Response<FakeBody> {
        let item = format!("\"{}items/0000000000\",", self.api_url);
        let chunk = Bytes::from(item.repeat(64 * 1024 / item.len()));
        let mut r = Response::new(FakeBody::Repeat {
            head: Some(Bytes::from_static(b"{\"items\":[")),
            count: bytes / chunk.len() as u64,
            chunk,
            tail: Some(Bytes::from_static(b"null]}")),
        });
        r.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let s = self.lock();
        let Some((token, until)) = &s.access_current else {
            return false;
        };
        if Instant::now() >= *until {
            return false;
        }
        match &s.opts.api_auth {
            ApiAuth::Header { name, prefix } => {
                req.headers()
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix(prefix.as_str()))
                    == Some(token.as_str())
            }
            ApiAuth::Query { param } => req.uri().query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .any(|(k, v)| k == param.as_str() && v == token.as_str())
            }),
        }
    }
}

async fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder};
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = match coding {
        "gzip" => GzipEncoder::new(data).read_to_end(&mut out).await,
        "deflate" => ZlibEncoder::new(data).read_to_end(&mut out).await,
        _ => BrotliEncoder::new(data).read_to_end(&mut out).await,
    };
    out
}
