//! Response headers every page gets, and the CSRF guard on state-changing requests.

use axum::extract::Request;
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::json_error;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// No page may use the camera, microphone or location ...
const PERMISSIONS: &str = "camera=(), microphone=(), geolocation=()";
/// ... except `/phone`, the softphone, which needs the microphone for itself (not for frames:
/// `frame-ancestors 'none'` and `X-Frame-Options` keep it out of other sites' frames anyway).
const PHONE_PERMISSIONS: &str = "camera=(), microphone=(self), geolocation=()";

pub async fn security_headers(request: Request, next: Next) -> Response {
    let permissions = if request.uri().path() == "/phone" { PHONE_PERMISSIONS } else { PERMISSIONS };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // The CSP is the same for `/phone`: `connect-src 'self'` covers the page's own
    // `wss://<host>/sip` (CSP Level 3 matches ws/wss to the page's https origin), and
    // WebRTC media and `srcObject` streams are not fetches the CSP governs.
    for (name, value) in [
        ("content-security-policy", CSP),
        ("strict-transport-security", "max-age=31536000"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("permissions-policy", permissions),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key("cache-control") {
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    response
}

/// Why a state-changing request is refused as cross-site, if it is.
///
/// Browsers send `Sec-Fetch-Site` and `Origin` on such requests; a request
/// from another site is refused. Clients without them (curl, scripts) are not
/// browsers and cannot be tricked into sending the session cookie.
pub fn cross_site_reason(method: &Method, headers: &axum::http::HeaderMap, authority: Option<&str>) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!("cross-site request refused (Sec-Fetch-Site: {site})"));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = origin.strip_prefix("https://");
        if host.is_none() || host != authority {
            return Some(format!("cross-origin request refused (Origin: {origin})"));
        }
    }
    None
}

/// WHEP players on other origins authenticate with a bearer token, which a
/// foreign page cannot make a browser send by itself (unlike the cookie):
/// such requests skip the origin check. Without a bearer token the WHEP
/// handlers fall back to the cookie, and then the check applies as everywhere.
fn is_bearer_whep(request: &Request) -> bool {
    request.uri().path().starts_with("/whep/") && crate::whep::bearer(request.headers()).is_some()
}

pub async fn csrf_guard(request: Request, next: Next) -> Response {
    if is_bearer_whep(&request) {
        return next.run(request).await;
    }
    let authority = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(reason) = cross_site_reason(request.method(), request.headers(), authority.as_deref()) {
        return json_error(StatusCode::FORBIDDEN, &reason);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn foreign_origins_are_refused_for_changes_only() {
        let host = Some("box:8443");
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(cross_site_reason(&Method::POST, &evil, host).is_some());
        assert!(cross_site_reason(&Method::GET, &evil, host).is_none());
        let same = headers(&[("origin", "https://box:8443"), ("sec-fetch-site", "same-origin")]);
        assert!(cross_site_reason(&Method::PUT, &same, host).is_none());
        let plain_http = headers(&[("origin", "http://box:8443")]);
        assert!(cross_site_reason(&Method::PUT, &plain_http, host).is_some());
        let null_origin = headers(&[("origin", "null")]);
        assert!(cross_site_reason(&Method::DELETE, &null_origin, host).is_some());
        let cross = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(cross_site_reason(&Method::POST, &cross, host).is_some());
        assert!(cross_site_reason(&Method::POST, &HeaderMap::new(), host).is_none(), "curl has neither header");
    }
}
