//! Cross-origin calls from the web app's pages (`CELLPORT_CORS_ORIGINS`): which origins may
//! call the API from a browser, and the CORS layer that answers their preflights.

use std::str::FromStr;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origins (`scheme://host[:port]`) allowed to call the API from a browser; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins(Vec<String>);

impl CorsOrigins {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn origins(&self) -> &[String] {
        &self.0
    }

    /// The layer that lets these origins call the API, or `None` when there are none.
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        if self.0.is_empty() {
            return None;
        }
        let origins: Vec<HeaderValue> = self
            .0
            .iter()
            .map(|o| HeaderValue::from_str(o).expect("origins are checked ASCII when parsed"))
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::HEAD, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    header::RANGE,
                    header::IF_RANGE,
                ])
                .expose_headers([
                    header::RETRY_AFTER,
                    header::ETAG,
                    header::CONTENT_DISPOSITION,
                    header::CONTENT_RANGE,
                    header::LOCATION,
                ])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

impl FromStr for CorsOrigins {
    type Err = String;

    /// Comma-separated origins; blanks around them are ignored, an empty list allows none.
    fn from_str(raw: &str) -> Result<CorsOrigins, String> {
        let mut origins = Vec::new();
        for entry in raw.split(',').map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            let origin = parse_origin(entry)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(CorsOrigins(origins))
    }
}

/// One origin as browsers send it in `Origin`: `http` or `https`, a host, an optional port,
/// nothing else (no path, no `*`). The scheme and host are lowercased, as browsers send them.
fn parse_origin(entry: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("{entry:?} is not an origin: {why}"));
    if entry == "*" {
        return refuse(
            "list the web app's origins, e.g. https://app.example.org; `*` is not accepted",
        );
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return refuse("it needs a scheme, e.g. https://app.example.org");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return refuse("the scheme must be http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return refuse("an origin has no path, query or fragment");
    }
    if authority.contains('@') {
        return refuse("an origin has no user name or password");
    }
    let (host, port) = split_port(authority).ok_or_else(|| {
        format!("{entry:?} is not an origin: the port must be a number from 1 to 65535")
    })?;
    let host_ok = !host.is_empty()
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')));
    if !host_ok {
        return refuse("the host must be a name or an IP address");
    }
    let host = host.to_ascii_lowercase();
    Ok(match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` (an IPv6 host in brackets); `None` when the port is not a valid one.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    let port: u16 = authority[colon + 1..].parse().ok().filter(|p| *p != 0)?;
    Some((&authority[..colon], Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<&[&str], &str>) {
        let parsed = raw.parse::<CorsOrigins>();
        match expected {
            Ok(origins) => assert_eq!(parsed.unwrap().origins(), origins, "{raw}"),
            Err(message) => {
                let error = parsed.unwrap_err();
                assert!(error.contains(message), "{raw}: {error}");
            }
        }
    }

    #[test]
    fn origins_are_parsed_as_browsers_send_them() {
        check("", Ok(&[]));
        check(" , ", Ok(&[]));
        check("https://app.example.org", Ok(&["https://app.example.org"]));
        check(
            "https://App.Example.org/, http://127.0.0.1:3000",
            Ok(&["https://app.example.org", "http://127.0.0.1:3000"]),
        );
        check("http://[::1]:8080", Ok(&["http://[::1]:8080"]));
        check(
            "https://a.example,https://a.example",
            Ok(&["https://a.example"]),
        );
    }

    #[test]
    fn anything_but_an_origin_is_refused_with_the_reason() {
        check("*", Err("`*` is not accepted"));
        check("app.example.org", Err("it needs a scheme"));
        check("ftp://app.example.org", Err("must be http or https"));
        check("https://app.example.org/app", Err("no path"));
        check("https://app.example.org?x=1", Err("no path"));
        check("https://user@app.example.org", Err("no user name"));
        check(
            "https://app.example.org:99999",
            Err("port must be a number"),
        );
        check("https://app.example.org:0", Err("port must be a number"));
        check("https://", Err("the host must be"));
        check("https://app example.org", Err("the host must be"));
    }
}
