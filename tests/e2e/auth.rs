//! Access control: tokens (JWT, HS256) for WebSockets, `/status` and a
//! project's `/health`; the browser-origin allow-list; settings refused at
//! start.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::common::*;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed here with the jsonwebtoken crate, independently of the
/// server's code.
fn sign(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `types` on `project`, valid for ten minutes.
pub(crate) fn grant(project: &str, types: &[&str]) -> String {
    sign(
        SECRET,
        json!({"project": project, "types": types, "exp": now_secs() + 600}),
    )
}

/// A token for `types` on `project` whose `sub` is `subject`.
pub(crate) fn grant_to(subject: &str, project: &str, types: &[&str]) -> String {
    sign(
        SECRET,
        json!({"project": project, "types": types, "sub": subject, "exp": now_secs() + 600}),
    )
}

/// Opens a WebSocket with extra request headers; on refusal, the status and
/// JSON body.
async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "refusal body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            Err((resp.status().as_u16(), json))
        }
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match open(url, headers).await {
        Ok(_) => panic!("{url} was admitted"),
        Err((status, body)) => (status, body["error"].as_str().unwrap_or("").to_owned()),
    }
}

#[tokio::test]
async fn with_a_secret_every_websocket_needs_a_token_that_grants_it() {
    let server = secured(&[]);
    let p = project();
    let url = |kind: &str, token: Option<&str>| {
        let mut u = server.url(&format!("type={kind}&projectId={p}"));
        if let Some(t) = token {
            u.push_str(&format!("&token={t}"));
        }
        u
    };
    let runtime = grant(&p, &["runtime"]);

    assert_eq!(
        refused(&url("runtime", None), &[]).await,
        (401, "missing_token".into())
    );
    let expired = sign(
        SECRET,
        json!({"project": p, "types": ["runtime"], "exp": now_secs() - 3600}),
    );
    assert_eq!(
        refused(&url("runtime", Some(&expired)), &[]).await,
        (401, "token_expired".into())
    );
    // Claims of an admin token under a runtime token's signature.
    let admin = grant(&p, &["admin"]);
    let mut parts: Vec<&str> = runtime.split('.').collect();
    parts[1] = admin.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    assert_eq!(
        refused(&url("admin", Some(&tampered)), &[]).await,
        (401, "invalid_token".into())
    );
    let foreign = sign(
        "another-secret-0123456789abcdef-0123456789",
        json!({"project": p, "types": ["runtime"], "exp": now_secs() + 600}),
    );
    assert_eq!(
        refused(&url("runtime", Some(&foreign)), &[]).await,
        (401, "invalid_token".into())
    );
    let other = grant(&project(), &["runtime"]);
    assert_eq!(
        refused(&url("runtime", Some(&other)), &[]).await,
        (403, "project_not_allowed".into())
    );
    assert_eq!(
        refused(&url("admin", Some(&runtime)), &[]).await,
        (403, "type_not_allowed".into())
    );
    // A bearer header counts like the query parameter.
    let header = format!("Bearer {other}");
    assert_eq!(
        refused(&url("runtime", None), &[("authorization", &header)]).await,
        (403, "project_not_allowed".into())
    );

    // Admitted: a runtime by query, a data-agent by header, an admin whose
    // token names the project by pattern. Routing works as without tokens.
    let mut r = Client::hello(open(&url("runtime", Some(&runtime)), &[]).await.unwrap()).await;
    let agent = format!("Bearer {}", grant(&p, &["data-agent"]));
    let mut d = Client::hello(
        open(&url("data-agent", None), &[("authorization", &agent)])
            .await
            .unwrap(),
    )
    .await;
    let pattern = grant(&format!("{}*", &p[..6]), &["admin", "runtime"]);
    let mut a = Client::hello(open(&url("admin", Some(&pattern)), &[]).await.unwrap()).await;
    r.send_json(&json!({"id": "m1", "type": "t", "to": {"type": "data-agent"}}))
        .await;
    let got = d.next_json().await;
    assert_eq!(
        (got["id"].as_str(), got["from"]["id"].as_str()),
        (Some("m1"), Some(r.id.as_str()))
    );
    // The admin sees the routed message (skipping join notices).
    loop {
        let seen = a.next_json().await;
        if seen.to_string().contains("\"m1\"") {
            break;
        }
    }

    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["authRefused"], 7, "{health}");
    // Tokens never reach the log.
    let log = server.stderr();
    for t in [&runtime, &expired, &tampered, &other, &pattern] {
        assert!(!log.contains(t.as_str()), "token in log:\n{log}");
    }
}

#[tokio::test]
async fn with_a_secret_status_needs_admin_and_project_health_needs_a_token() {
    let server = secured(&[]);
    let p = project();
    let get = |path: String, token: Option<String>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
        let server = &server;
        async move { server.request(&raw).await }
    };
    let (status, body) = get(format!("/status?projectId={p}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant(&p, &["runtime"])),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_required"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant("other", &["admin"])),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("project_not_allowed"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant(&p, &["admin"])),
    )
    .await;
    assert_eq!(
        (status, body["projectId"].as_str()),
        (200, Some(p.as_str())),
        "{body}"
    );
    // The query parameter works for /status too.
    let (status, _) = get(
        format!("/status?projectId={p}&token={}", grant(&p, &["admin"])),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = get(format!("/health?projectId={p}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = get(
        format!("/health?projectId={p}"),
        Some(grant(&p, &["data-agent"])),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("healthy")),
        "{body}"
    );
    // Liveness without a project stays open for load balancers.
    let (status, _) = get("/health".into(), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn only_listed_origins_may_open_websockets() {
    let server = Server::start(&["--allowed-origin", "https://app.example.com/"]);
    let p = project();
    let url = server.url(&format!("type=runtime&projectId={p}"));
    assert_eq!(
        refused(&url, &[("origin", "https://evil.example.com")]).await,
        (403, "origin_not_allowed".into())
    );
    Client::hello(
        open(&url, &[("origin", "https://APP.example.com")])
            .await
            .unwrap(),
    )
    .await;
    // No Origin: not a browser, not affected.
    Client::hello(open(&url, &[]).await.unwrap()).await;
}

#[tokio::test]
async fn bad_access_settings_are_refused_at_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .args(["--listen", "127.0.0.1:0", "--in-memory"])
            .args(args)
            .env_remove("WSROOM_AUTH_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--auth-secret", "short"]).contains("at least 32"));
    assert!(
        run(&["--auth-secret-file", "/nonexistent/secret"])
            .contains("cannot read the auth secret file")
    );
    assert!(run(&["--allowed-origin", "example.com"]).contains("--allowed-origin"));
    assert!(
        run(&[
            "--tls-self-signed",
            "--tls-self-signed-out",
            "/nonexistent/dir/c.pem"
        ])
        .contains("cannot write the self-signed certificate")
    );
    let mint = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["token", "--project", "p", "--types", "runtime"])
        .env_remove("WSROOM_AUTH_SECRET")
        .output()
        .unwrap();
    assert!(!mint.status.success());
    assert!(String::from_utf8_lossy(&mint.stderr).contains("secret"));
}

/// Opens a WebSocket offering `protocols`; the protocol the server selected,
/// or the refusal's status and error code.
async fn open_offering(url: &str, protocols: &str) -> Result<Option<String>, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    // tungstenite, like a browser, fails a handshake that selects none of
    // the protocols offered.
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((ws, resp)) => {
            let mut client = Client::hello(ws).await;
            client.close().await;
            Ok(resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned()))
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap_or_default();
            Err((
                resp.status().as_u16(),
                body["error"].as_str().unwrap_or("").to_owned(),
            ))
        }
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

#[tokio::test]
async fn a_browser_sends_its_token_as_a_subprotocol_not_in_the_url() {
    let server = secured(&[]);
    let p = project();
    let url = server.url(&format!("type=runtime&projectId={p}"));
    let token = grant(&p, &["runtime"]);
    // What a browser's `new WebSocket(url, ["wsroom", "bearer." + token])`
    // sends: admitted, and `wsroom` selected (never the token).
    let selected = open_offering(&url, &format!("wsroom, bearer.{token}")).await;
    assert_eq!(selected, Ok(Some("wsroom".into())));
    // A token for another project is refused as in the URL.
    let other = grant(&project(), &["runtime"]);
    assert_eq!(
        open_offering(&url, &format!("wsroom, bearer.{other}")).await,
        Err((403, "project_not_allowed".into()))
    );
    // The token without `wsroom` beside it: nothing the server could select.
    assert_eq!(
        open_offering(&url, &format!("bearer.{token}")).await,
        Err((400, "bad_upgrade".into()))
    );
    // `wsroom` alone is no token.
    assert_eq!(
        open_offering(&url, "wsroom").await,
        Err((401, "missing_token".into()))
    );
    // Without a secret, `wsroom` is still selected when offered, and a
    // client offering nothing is answered with none, as before.
    let open = Server::start(&[]);
    let url = open.url(&format!("type=runtime&projectId={p}"));
    assert_eq!(
        open_offering(&url, "wsroom").await,
        Ok(Some("wsroom".into()))
    );
    let ws = within(tokio_tungstenite::connect_async(url)).await.unwrap();
    assert!(ws.1.headers().get("sec-websocket-protocol").is_none());
}

// ---- public keys (RS256, ES256) and SIGHUP --------------------------------------
//
// tests/fixtures/jwt-rsa-{1,2}.key are RSA keys whose public halves are
// tests/fixtures/jwt-keys.jwks.json's k1 and k2; jwt-ec.key is a P-256 key,
// jwt-ec.pub its public half (all made with openssl for these tests).

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// A token with `claims` signed by the fixture key `key` with `alg`, its
/// header naming `kid`.
fn sign_with(key: &str, alg: jsonwebtoken::Algorithm, kid: Option<&str>, claims: Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key}")).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(project: &str) -> Value {
    json!({"project": project, "types": ["runtime"], "exp": now_secs() + 600})
}

#[tokio::test]
async fn an_rs256_token_is_checked_with_the_jwks_key_its_kid_names() {
    let jwks = format!("{FIXTURES}/jwt-keys.jwks.json");
    let server = Server::start(&["--auth-public-keys", &jwks]);
    let p = project();
    let url = |token: &str| server.url(&format!("type=runtime&projectId={p}&token={token}"));
    use jsonwebtoken::Algorithm::RS256;
    // Each key of the set verifies the tokens that name it.
    for (key, kid) in [("jwt-rsa-1.key", "k1"), ("jwt-rsa-2.key", "k2")] {
        let token = sign_with(key, RS256, Some(kid), claims(&p));
        let ws = open(&url(&token), &[])
            .await
            .expect("a token its kid's key verifies");
        Client::hello(ws).await;
    }
    let refused = async |token: String| {
        let (status, body) = open(&url(&token), &[]).await.expect_err("refused");
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{body}"
        );
        body["message"].as_str().unwrap().to_owned()
    };
    // Signed by k1, naming k2: k2 does not verify it.
    let message = refused(sign_with("jwt-rsa-1.key", RS256, Some("k2"), claims(&p))).await;
    assert!(message.contains("signature"), "{message}");
    let message = refused(sign_with("jwt-rsa-1.key", RS256, Some("k9"), claims(&p))).await;
    assert!(message.contains("kid \"k9\""), "{message}");
    // Two keys could verify a token without a kid: it must name one.
    let message = refused(sign_with("jwt-rsa-1.key", RS256, None, claims(&p))).await;
    assert!(message.contains("names no kid"), "{message}");
    // No secret: HS256 tokens are not taken.
    let message = refused(grant(&p, &["runtime"])).await;
    assert!(message.contains("not HS256"), "{message}");
}

#[tokio::test]
async fn an_es256_token_is_checked_with_a_pem_key_beside_the_secret() {
    let pem = format!("{FIXTURES}/jwt-ec.pub");
    let server = secured(&["--auth-public-keys", &pem]);
    let p = project();
    let url = |token: &str| server.url(&format!("type=runtime&projectId={p}&token={token}"));
    let es256 = sign_with(
        "jwt-ec.key",
        jsonwebtoken::Algorithm::ES256,
        None,
        claims(&p),
    );
    Client::hello(
        open(&url(&es256), &[])
            .await
            .expect("ES256 with the PEM key"),
    )
    .await;
    Client::hello(
        open(&url(&grant(&p, &["runtime"])), &[])
            .await
            .expect("HS256 with the secret"),
    )
    .await;
    // An RS256 token has no key here.
    let rs256 = sign_with(
        "jwt-rsa-1.key",
        jsonwebtoken::Algorithm::RS256,
        None,
        claims(&p),
    );
    let (status, body) = open(&url(&rs256), &[]).await.expect_err("no RSA key");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
}

#[test]
fn unusable_public_keys_stop_the_server_at_start_with_the_file_named() {
    let not_a_key = temp_file("keys.pem", "hello");
    let stderr = refused_at_start(&["--auth-public-keys", not_a_key.to_str().unwrap()]);
    assert!(stderr.contains("not a PEM public key"), "{stderr}");
    assert!(stderr.contains(not_a_key.to_str().unwrap()), "{stderr}");
    let empty = temp_file("keys.json", r#"{"keys": []}"#);
    let stderr = refused_at_start(&["--auth-public-keys", empty.to_str().unwrap()]);
    assert!(stderr.contains("holds no key"), "{stderr}");
}

#[tokio::test]
async fn sighup_rotates_the_secret_for_new_connections_and_open_ones_stay() {
    let old_secret = SECRET;
    let new_secret = "another-secret-0123456789abcdef-0123456789";
    let file = temp_file("secret", &format!("{old_secret}\n"));
    let server = Server::start(&["--auth-secret-file", file.to_str().unwrap()]);
    let p = project();
    let token_from = |secret: &str, kind: &str| {
        sign(
            secret,
            json!({"project": p, "types": [kind], "exp": now_secs() + 600}),
        )
    };
    let url =
        |token: &str, kind: &str| server.url(&format!("type={kind}&projectId={p}&token={token}"));
    let mut before = Client::hello(
        open(&url(&token_from(old_secret, "runtime"), "runtime"), &[])
            .await
            .expect("the old secret's token, before the rotation"),
    )
    .await;

    std::fs::write(&file, format!("{new_secret}\n")).unwrap();
    crate::reload::sighup(&server);
    server
        .wait_stderr("the keys reloaded", |log| {
            log.contains("token keys reloaded")
        })
        .await;
    let (status, body) = open(&url(&token_from(old_secret, "runtime"), "runtime"), &[])
        .await
        .expect_err("the old secret's tokens are refused after the rotation");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    let mut after = Client::hello(
        open(
            &url(&token_from(new_secret, "data-agent"), "data-agent"),
            &[],
        )
        .await
        .expect("the new secret's token"),
    )
    .await;
    // The socket opened before the rotation still works both ways.
    before
        .send_json(&json!({"id": "m", "type": "t", "payload": 1, "to": {"id": after.id}}))
        .await;
    assert_eq!(after.next_json().await["payload"], 1);

    // A secret file that cannot be used leaves the keys in use.
    std::fs::write(&file, "short\n").unwrap();
    crate::reload::sighup(&server);
    server
        .wait_stderr("the failed reload", |log| {
            log.contains("cannot reload the token keys")
        })
        .await;
    Client::hello(
        open(&url(&token_from(new_secret, "runtime"), "runtime"), &[])
            .await
            .expect("the new secret still works"),
    )
    .await;
}

#[tokio::test]
async fn status_shows_who_a_client_is_its_token_s_subject_and_its_own_parameters() {
    let server = secured(&["--in-memory"]);
    let p = project();
    let token = sign(
        SECRET,
        json!({"project": p, "types": ["runtime"], "exp": now_secs() + 600, "sub": "alice"}),
    );
    let url = server.url(&format!(
        "type=runtime&projectId={p}&room=blue&lang=en&token={token}&lang=fr%20CA&projectId=other&type=admin"
    ));
    let client = Client::hello(open(&url, &[]).await.expect("admitted")).await;
    let admin = grant(&p, &["admin"]);
    let (status, body) = server
        .request(&format!(
            "GET /status?projectId={p} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let metadata = &body["clients"][0]["metadata"];
    assert_eq!(body["clients"][0]["id"], client.id.as_str());
    assert_eq!(metadata["subject"], "alice", "{body}");
    // The first type and projectId count (a token for runtime in p
    // admits it); repeated, they are no client parameters.
    assert_eq!(body["clients"][0]["type"], "runtime", "{body}");
    // In order, repeated names kept; type, projectId and token left out.
    assert_eq!(
        metadata["params"],
        json!([["room", "blue"], ["lang", "en"], ["lang", "fr CA"]]),
        "{body}"
    );

    // Too many parameters: refused before the upgrade, saying why.
    let many: String = (0..33).map(|i| format!("&p{i}=v")).collect();
    let token = grant(&p, &["runtime"]);
    let (status, body) = open(
        &server.url(&format!("type=runtime&projectId={p}&token={token}{many}")),
        &[],
    )
    .await
    .expect_err("33 parameters");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_params")),
        "{body}"
    );
}
