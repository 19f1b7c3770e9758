//! The web app's pages carry a Content-Security-Policy that allows only
//! their own scripts (no inline script) and forbids framing, so a host's
//! Remove, Mute and Go-live buttons cannot be clickjacked. The browser
//! journey (scripts/e2e-browser) runs the whole app under this policy.

mod common;

use common::Server;

#[test]
fn pages_forbid_framing_and_inline_script() {
    let s = Server::start(&[]);
    for path in ["/", "/s/0000000000000001", "/assets/space.js"] {
        let r = reqwest::blocking::get(s.url(path)).unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let body = r.text().unwrap();
        if path.ends_with(".js") {
            continue;
        }
        // Every script is a file of the app: none inline, no handlers in
        // attributes.
        for tag in body.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(
                open.contains("src=\"/assets/"),
                "{path}: inline <script{open}>"
            );
        }
        assert!(!body.contains(" onclick="), "{path}: inline handler");
    }
}
