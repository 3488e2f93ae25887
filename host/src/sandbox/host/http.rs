//! `http`: the host makes the request, only to allowed origins; redirects are followed
//! by hand so each hop is re-checked; secret placeholders become values only on the
//! way out, and secret values are masked on the way back in; bodies are capped.

use std::collections::BTreeSet;
use std::time::Instant;

use aho_corasick::AhoCorasick;
use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, HeaderMap, HeaderName, HeaderValue, LOCATION,
};
use reqwest::{Method, StatusCode};
use url::Url;

use super::bounded;
use crate::classify::REDACTED;
use crate::sandbox::bindings::http::{Host, HttpError, Request, Response};
use crate::sandbox::grants::Origin;
use crate::sandbox::record::{Capability, Denial, HttpCall};
use crate::sandbox::state::HttpView;

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Bytes of request body a step may send, after secret substitution.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// Bytes of one header value, after secret substitution (a long JWT fits).
const MAX_HEADER_VALUE: usize = 8 << 10;
/// Headers per request.
const MAX_HEADERS: usize = 64;
/// Headers the host sets itself; a guest may not.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    // Responses must come back as plain bytes, so that secret values echoed by a service
    // can be masked: no compression, no byte ranges that split a value.
    "accept-encoding",
    "te",
    "range",
];

/// The HTTP capability: the shared client and the step's allowed origins.
pub(crate) struct HttpCap {
    client: reqwest::Client,
    origins: BTreeSet<Origin>,
    response_cap: usize,
}

impl HttpCap {
    pub(crate) fn new(
        client: reqwest::Client,
        origins: BTreeSet<Origin>,
        response_cap: usize,
    ) -> Self {
        Self {
            client,
            origins,
            response_cap,
        }
    }
}

/// A request after validation and secret substitution.
struct Prepared {
    method: Method,
    url: Url,
    origin: Origin,
    /// Each header, and whether a secret was substituted into it.
    headers: Vec<(HeaderName, HeaderValue, bool)>,
    body: Option<Vec<u8>>,
    body_carries_secret: bool,
    secrets: Vec<String>,
}

impl HttpView<'_> {
    fn record(
        &mut self,
        method: &str,
        origin: &str,
        started: Instant,
        status: Option<u16>,
        outcome: &str,
        secrets: &[String],
    ) {
        self.shared.record.http_calls.push(HttpCall {
            method: method.to_owned(),
            origin: bounded(origin),
            status,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            outcome: outcome.to_owned(),
            secrets: secrets.to_vec(),
        });
    }

    fn deny(
        &mut self,
        method: &str,
        origin: &str,
        started: Instant,
        secrets: &[String],
    ) -> HttpError {
        self.shared.record.denials.push(Denial {
            capability: Capability::Http,
            target: bounded(origin),
            reason: "origin not allowed for this step".into(),
        });
        self.record(method, origin, started, None, "denied", secrets);
        HttpError::Denied(origin.to_owned())
    }

    fn prepare(&self, req: Request) -> Result<Prepared, HttpError> {
        let method = match req.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            other => {
                return Err(HttpError::InvalidRequest(format!(
                    "method `{}` is not allowed",
                    bounded(other)
                )));
            }
        };
        let url =
            Url::parse(&req.url).map_err(|e| HttpError::InvalidRequest(format!("bad URL: {e}")))?;
        let origin = Origin::of(&url).map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
        if req.headers.len() > MAX_HEADERS {
            return Err(HttpError::InvalidRequest(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        if req
            .body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_REQUEST_BODY)
        {
            return Err(HttpError::InvalidRequest(format!(
                "body exceeds {MAX_REQUEST_BODY} bytes"
            )));
        }

        let issued: Vec<_> = self.secrets.issued().collect();
        let substitute = Substitution::new(&issued);
        let mut secrets = Vec::new();
        let mut headers = Vec::with_capacity(req.headers.len());
        for (name, value) in req.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                HttpError::InvalidRequest(format!("bad header name `{}`", bounded(&name)))
            })?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(HttpError::InvalidRequest(format!(
                    "header `{name}` is set by the host"
                )));
            }
            let (value, used) = substitute
                .apply(value.as_bytes(), MAX_HEADER_VALUE)
                .ok_or_else(|| {
                    HttpError::InvalidRequest(format!(
                        "header `{name}` exceeds {MAX_HEADER_VALUE} bytes"
                    ))
                })?;
            let carries_secret = !used.is_empty();
            secrets.extend(used);
            let mut value = HeaderValue::from_bytes(&value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header `{name}`")))?;
            value.set_sensitive(carries_secret);
            headers.push((name, value, carries_secret));
        }
        let mut body_carries_secret = false;
        let body = match req.body {
            Some(body) => {
                let (body, used) = substitute.apply(&body, MAX_REQUEST_BODY).ok_or_else(|| {
                    HttpError::InvalidRequest(format!("body exceeds {MAX_REQUEST_BODY} bytes"))
                })?;
                body_carries_secret = !used.is_empty();
                secrets.extend(used);
                Some(body)
            }
            None => None,
        };
        secrets.sort();
        secrets.dedup();
        Ok(Prepared {
            method,
            url,
            origin,
            headers,
            body,
            body_carries_secret,
            secrets,
        })
    }

    /// A masker for every granted secret value, built once per response.
    fn secret_mask(&self) -> SecretMask {
        let values: Vec<&str> = self
            .secrets
            .values()
            .map(|v| v.expose())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return SecretMask::Nothing;
        }
        match AhoCorasick::new(&values) {
            Ok(matcher) => SecretMask::Values(matcher, vec![REDACTED; values.len()]),
            // A matcher that cannot be built masks everything rather than leak.
            Err(_) => SecretMask::Everything,
        }
    }
}

/// Masks secret values in bytes coming back to the guest.
enum SecretMask {
    Nothing,
    Values(AhoCorasick, Vec<&'static str>),
    Everything,
}

impl SecretMask {
    fn apply(&self, bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Self::Nothing => bytes,
            Self::Values(matcher, replacements) => matcher.replace_all_bytes(&bytes, replacements),
            Self::Everything => REDACTED.as_bytes().to_vec(),
        }
    }
}

/// Swaps issued placeholders for secret values.
struct Substitution<'a> {
    matcher: Option<AhoCorasick>,
    issued: &'a [(&'a str, &'a str, &'a crate::sandbox::grants::SecretValue)],
}

impl<'a> Substitution<'a> {
    fn new(issued: &'a [(&'a str, &'a str, &'a crate::sandbox::grants::SecretValue)]) -> Self {
        let matcher = if issued.is_empty() {
            None
        } else {
            AhoCorasick::new(issued.iter().map(|(p, ..)| p)).ok()
        };
        Self { matcher, issued }
    }

    /// The bytes with placeholders replaced, and the names of the secrets used; `None` if
    /// the result would exceed `limit` bytes (checked before it is built, so a guest
    /// cannot make the host allocate more than the limit).
    fn apply(&self, bytes: &[u8], limit: usize) -> Option<(Vec<u8>, Vec<String>)> {
        if bytes.len() > limit {
            return None;
        }
        let Some(matcher) = &self.matcher else {
            return Some((bytes.to_vec(), Vec::new()));
        };
        let mut expanded = bytes.len();
        for m in matcher.find_iter(bytes) {
            let (_, _, value) = self.issued[m.pattern().as_usize()];
            expanded = expanded - (m.end() - m.start()) + value.expose().len();
            if expanded > limit {
                return None;
            }
        }
        let mut used = Vec::new();
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for m in matcher.find_iter(bytes) {
            let (_, name, value) = self.issued[m.pattern().as_usize()];
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(value.expose().as_bytes());
            used.push(name.to_owned());
            last = m.end();
        }
        out.extend_from_slice(&bytes[last..]);
        Some((out, used))
    }
}

impl Host for HttpView<'_> {
    async fn send(&mut self, req: Request) -> wasmtime::Result<Result<Response, HttpError>> {
        self.shared.charge()?;
        let started = Instant::now();
        let method_text = bounded(&req.method);
        let url_origin = Url::parse(&req.url).ok().and_then(|u| Origin::of(&u).ok());
        // Refuse a disallowed origin before anything else, so the denial is recorded even
        // for an otherwise malformed request.
        if let Some(origin) = &url_origin
            && !self.cap.origins.contains(origin)
        {
            return Ok(Err(self.deny(
                &method_text,
                &origin.to_string(),
                started,
                &[],
            )));
        }
        let prepared = match self.prepare(req) {
            Ok(p) => p,
            Err(e) => {
                let origin = url_origin.map(|o| o.to_string()).unwrap_or_default();
                self.record(&method_text, &origin, started, None, "invalid", &[]);
                return Ok(Err(e));
            }
        };
        let Prepared {
            mut method,
            mut url,
            mut origin,
            mut headers,
            mut body,
            body_carries_secret,
            secrets,
        } = prepared;
        let first_origin = origin.clone();

        let mut hops = 0;
        let response = loop {
            let mut map = HeaderMap::with_capacity(headers.len() + 1);
            map.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            for (name, value, _) in &headers {
                map.append(name.clone(), value.clone());
            }
            let mut request = self
                .cap
                .client
                .request(method.clone(), url.clone())
                .headers(map);
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let (outcome, error) = if e.is_timeout() {
                        ("timeout", HttpError::Timeout)
                    } else {
                        ("transport", HttpError::Transport(transport_reason(&e)))
                    };
                    self.record(
                        method.as_str(),
                        &origin.to_string(),
                        started,
                        None,
                        outcome,
                        &secrets,
                    );
                    return Ok(Err(error));
                }
            };
            let Some(location) = response
                .status()
                .is_redirection()
                .then(|| response.headers().get(LOCATION))
                .flatten()
            else {
                break response;
            };
            hops += 1;
            let next = location.to_str().ok().and_then(|l| url.join(l).ok());
            let next_origin = next.as_ref().and_then(|u| Origin::of(u).ok());
            let (Some(next), Some(next_origin)) = (next, next_origin) else {
                self.record(
                    method.as_str(),
                    &origin.to_string(),
                    started,
                    Some(response.status().as_u16()),
                    "invalid",
                    &secrets,
                );
                return Ok(Err(HttpError::Transport(
                    "redirect to an invalid location".into(),
                )));
            };
            if !self.cap.origins.contains(&next_origin) {
                return Ok(Err(self.deny(
                    method.as_str(),
                    &next_origin.to_string(),
                    started,
                    &secrets,
                )));
            }
            if hops > MAX_REDIRECTS {
                self.record(
                    method.as_str(),
                    &origin.to_string(),
                    started,
                    Some(response.status().as_u16()),
                    "transport",
                    &secrets,
                );
                return Ok(Err(HttpError::Transport(format!(
                    "more than {MAX_REDIRECTS} redirects"
                ))));
            }
            let status = response.status();
            let keeps_body = matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            );
            if next_origin != first_origin {
                // Secrets go to the origin the step addressed, not wherever it redirects.
                if keeps_body && body_carries_secret && body.is_some() {
                    self.record(
                        method.as_str(),
                        &next_origin.to_string(),
                        started,
                        Some(status.as_u16()),
                        "denied",
                        &secrets,
                    );
                    return Ok(Err(HttpError::Denied(format!(
                        "{next_origin} (a redirect would carry a secret to another origin)"
                    ))));
                }
                headers.retain(|(_, _, carries_secret)| !carries_secret);
            }
            if status == StatusCode::SEE_OTHER
                || ((status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                    && method != Method::GET)
            {
                method = Method::GET;
                body = None;
            }
            url = next;
            origin = next_origin;
        };

        let status = response.status().as_u16();
        let encoded = response
            .headers()
            .get(CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded || response.status() == StatusCode::PARTIAL_CONTENT {
            // Bytes the host cannot read cannot be checked for secrets.
            self.record(
                method.as_str(),
                &origin.to_string(),
                started,
                Some(status),
                "transport",
                &secrets,
            );
            return Ok(Err(HttpError::Transport(
                "encoded or partial responses are refused".into(),
            )));
        }
        let response_headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.cap.response_cap {
                        self.record(
                            method.as_str(),
                            &origin.to_string(),
                            started,
                            Some(status),
                            "too_large",
                            &secrets,
                        );
                        return Ok(Err(HttpError::TooLarge(self.cap.response_cap as u64)));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let outcome = if e.is_timeout() {
                        "timeout"
                    } else {
                        "transport"
                    };
                    self.record(
                        method.as_str(),
                        &origin.to_string(),
                        started,
                        Some(status),
                        outcome,
                        &secrets,
                    );
                    return Ok(Err(if e.is_timeout() {
                        HttpError::Timeout
                    } else {
                        HttpError::Transport(transport_reason(&e))
                    }));
                }
            }
        }
        let mask = self.secret_mask();
        let body = mask.apply(body);
        let headers = response_headers
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    String::from_utf8_lossy(&mask.apply(v.into_bytes())).into_owned(),
                )
            })
            .collect();
        self.record(
            method.as_str(),
            &origin.to_string(),
            started,
            Some(status),
            "ok",
            &secrets,
        );
        Ok(Ok(Response {
            status,
            headers,
            body,
        }))
    }
}

/// A short, fixed reason: reqwest's messages can embed the URL, which may carry data.
fn transport_reason(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection failed".into()
    } else if error.is_body() || error.is_decode() {
        "response body failed".into()
    } else {
        "request failed".into()
    }
}
