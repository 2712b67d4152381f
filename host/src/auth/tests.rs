use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn token(project: &str, types: &[&str]) -> String {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    mint(SECRET, project, &types, Duration::from_secs(60), None).unwrap()
}

fn claims(project: &str, types: &[&str], exp: u64) -> String {
    let claims = Claims {
        project: project.into(),
        types: types.iter().map(|t| t.to_string()).collect(),
        exp,
        iat: None,
        sub: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn join<'a>(project: &'a str, kind: &'a str) -> Access<'a> {
    Access::Join { project, kind }
}

#[test]
fn a_minted_token_admits_what_it_names_and_nothing_else() {
    let auth = Auth::new(SECRET).unwrap();
    let t = token("p1", &["runtime"]);
    let c = auth.check(Some(&t), join("p1", "runtime")).unwrap();
    assert_eq!(c.project, "p1");
    assert!(c.exp > unix_now());
    let denied = auth.check(Some(&t), join("p2", "runtime")).unwrap_err();
    assert_eq!((denied.status, denied.code), (403, "project_not_allowed"));
    let denied = auth.check(Some(&t), join("p1", "admin")).unwrap_err();
    assert_eq!((denied.status, denied.code), (403, "type_not_allowed"));
    let denied = auth
        .check(Some(&t), Access::Status { project: "p1" })
        .unwrap_err();
    assert_eq!((denied.status, denied.code), (403, "admin_required"));
    assert!(
        auth.check(Some(&t), Access::Health { project: "p1" })
            .is_ok()
    );
}

#[test]
fn project_patterns_match_by_prefix() {
    let auth = Auth::new(SECRET).unwrap();
    let t = token("acme-*", &["admin"]);
    assert!(
        auth.check(Some(&t), Access::Status { project: "acme-1" })
            .is_ok()
    );
    assert!(
        auth.check(Some(&t), Access::Status { project: "acme-" })
            .is_ok()
    );
    assert!(
        auth.check(Some(&t), Access::Status { project: "acm" })
            .is_err()
    );
    assert!(
        auth.check(Some(&t), Access::Status { project: "other" })
            .is_err()
    );
    let all = token("*", &["runtime"]);
    assert!(auth.check(Some(&all), join("anything", "runtime")).is_ok());
    // A `*` elsewhere is an ordinary character.
    let mid = token("a*b", &["runtime"]);
    assert!(auth.check(Some(&mid), join("axb", "runtime")).is_err());
    assert!(auth.check(Some(&mid), join("a*b", "runtime")).is_ok());
}

#[test]
fn missing_expired_tampered_and_foreign_tokens_are_401() {
    let auth = Auth::new(SECRET).unwrap();
    let code = |t: Option<&str>| {
        let d = auth.check(t, join("p", "runtime")).unwrap_err();
        assert_eq!(d.status, 401, "{d:?}");
        d.code
    };
    assert_eq!(code(None), "missing_token");
    assert_eq!(code(Some("")), "missing_token");
    assert_eq!(code(Some("not a jwt")), "invalid_token");
    let expired = claims("p", &["runtime"], unix_now() - LEEWAY_SECS - 60);
    assert_eq!(code(Some(&expired)), "token_expired");
    // Within the leeway it still counts.
    let just = claims("p", &["runtime"], unix_now() - 1);
    assert!(auth.check(Some(&just), join("p", "runtime")).is_ok());
    // Change the claims, keep the signature.
    let good = token("p", &["runtime"]);
    let mut parts: Vec<&str> = good.split('.').collect();
    let other = token("p", &["admin"]);
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(code(Some(&parts.join("."))), "invalid_token");
    // Signed with another secret.
    let foreign = mint(
        b"another secret that is long enough!!",
        "p",
        &["runtime".into()],
        Duration::from_secs(60),
        None,
    )
    .unwrap();
    assert_eq!(code(Some(&foreign)), "invalid_token");
    // "alg": "none" is refused.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert_eq!(code(Some(&none)), "invalid_token");
}

#[test]
fn short_secrets_and_empty_grants_are_refused() {
    assert!(Auth::new(b"short").is_err());
    assert!(
        mint(
            SECRET,
            "",
            &["runtime".into()],
            Duration::from_secs(1),
            None
        )
        .is_err()
    );
    assert!(mint(SECRET, "p", &[], Duration::from_secs(1), None).is_err());
    assert!(mint(SECRET, "p", &["runtime".into()], Duration::ZERO, None).is_err());
}

#[test]
fn the_header_wins_over_the_query() {
    assert_eq!(bearer(Some("Bearer abc"), Some("q")), Some("abc"));
    assert_eq!(bearer(Some("bearer  abc "), None), Some("abc"));
    assert_eq!(bearer(Some("Basic dXNlcg=="), Some("q")), Some("q"));
    assert_eq!(bearer(None, Some("q")), Some("q"));
    assert_eq!(bearer(None, None), None);
}

#[test]
fn origins_are_checked_and_normalized() {
    assert_eq!(
        check_origin("https://Example.com/").unwrap(),
        "https://example.com"
    );
    assert_eq!(
        check_origin("http://localhost:3000").unwrap(),
        "http://localhost:3000"
    );
    for bad in [
        "example.com",
        "ftp://x",
        "https://x/path",
        "https://x?q",
        "*",
    ] {
        assert!(check_origin(bad).is_err(), "{bad}");
    }
    assert_eq!(normalize_origin("HTTPS://A.b"), "https://a.b");
}

#[test]
fn a_token_is_read_from_the_offered_subprotocols() {
    let token = |lines: &[&'static str]| subprotocol_token(lines.iter().copied());
    assert_eq!(token(&["wsroom, bearer.a.b.c"]), Some("a.b.c"));
    // Several header lines, spaces, empty entries.
    assert_eq!(token(&["wsroom", " , bearer.x.y.z ,"]), Some("x.y.z"));
    assert_eq!(token(&["wsroom"]), None);
    assert_eq!(token(&[]), None);
    let offered: Vec<&str> = offered_subprotocols(["a, b", "c"].into_iter()).collect();
    assert_eq!(offered, ["a", "b", "c"]);
}
