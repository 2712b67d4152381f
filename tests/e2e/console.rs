//! The console: its JSON list of projects over HTTP, and its pages in a real
//! headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromedriver`, started here; fantoccini speaks WebDriver). Each browser
//! test writes a screenshot of the page it checked to
//! `target/tmp/console-*.png` (README's pictures).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::auth::grant;
use crate::common::*;

// ---- /console/api/projects ----------------------------------------------------

#[tokio::test]
async fn the_console_api_pages_through_the_live_projects_in_order() {
    let server = Server::start(&["--in-memory"]);
    let prefix = format!("pg-{}", uuid::Uuid::new_v4().simple());
    let mut clients = Vec::new();
    for i in [4, 0, 6, 2, 5, 1, 3] {
        let project = format!("{prefix}-{i}");
        clients.push(server.connect("runtime", &project).await);
        if i == 2 {
            clients.push(server.connect("data-agent", &project).await);
        }
    }
    let other = server.connect("runtime", &project()).await;

    // Three at a time, in projectId order, each page after the last id.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for expected_len in [3, 3, 1] {
        let (status, page) = server
            .get(&format!(
                "/console/api/projects?q={prefix}&limit=3&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 7, "{page}");
        let ids: Vec<&str> = page["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["projectId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), expected_len, "{page}");
        seen.extend(ids.iter().map(|s| s.to_string()));
        match page["nextCursor"].as_str() {
            Some(next) => {
                assert_eq!(next, *ids.last().unwrap());
                cursor = next.to_owned();
            }
            None => assert_eq!(expected_len, 1, "only the last page has no cursor: {page}"),
        }
    }
    let wanted: Vec<String> = (0..7).map(|i| format!("{prefix}-{i}")).collect();
    assert_eq!(seen, wanted, "every project once, in order");

    // A project's figures: clients by type, messages handled, its room.
    let (_, page) = server
        .get(&format!("/console/api/projects?q={prefix}-2"))
        .await;
    let p = &page["projects"][0];
    assert_eq!(p["projectId"], format!("{prefix}-2"));
    assert_eq!(p["clientCount"], 2);
    assert_eq!(p["clientsByType"], json!({"runtime": 1, "data-agent": 1}));
    assert_eq!(p["hibernated"], false);
    assert_eq!(p["messages"], 0);
    let component = default_component_name();
    assert_eq!(p["component"], component);
    // The project at index 3 of `clients` is `-2`'s runtime client.
    clients[3]
        .send_json(&json!({"id": "m1", "type": "t", "payload": 1, "to": {"type": "data-agent"}}))
        .await;
    clients[4].next_json().await;
    poll_until(
        "the console to count the message",
        std::time::Duration::from_millis(20),
        async || {
            let (_, page) = server
                .get(&format!("/console/api/projects?q={prefix}-2"))
                .await;
            page
        },
        |page| page["projects"][0]["messages"] == 1,
    )
    .await;

    // Bad parameters are refused with a reason.
    for bad in ["limit=0", "limit=501", "limit=ten"] {
        let (status, body) = server.get(&format!("/console/api/projects?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_limit");
    }
    drop(other);
}

#[tokio::test]
async fn without_a_filter_the_pages_cover_every_room_and_a_removed_room_leaves() {
    let server = Server::start(&["--in-memory", "--cleanup-delay-ms", "0"]);
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.connect("runtime", &format!("all-{i}")).await);
    }
    let (_, first) = server.get("/console/api/projects?limit=2").await;
    assert_eq!(first["total"], 5, "{first}");
    assert_eq!(first["nextCursor"], "all-1", "{first}");
    let (_, rest) = server
        .get("/console/api/projects?limit=10&cursor=all-1")
        .await;
    let ids: Vec<&str> = rest["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["projectId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["all-2", "all-3", "all-4"], "{rest}");
    assert_eq!(rest["nextCursor"], Value::Null);
    // The last client of all-3 leaves: its room goes, and the list says so.
    clients[3].close().await;
    poll_until(
        "the empty room to leave the list",
        std::time::Duration::from_millis(50),
        async || server.get("/console/api/projects").await.1,
        |page| page["total"] == 4 && !page.to_string().contains("all-3"),
    )
    .await;
}

#[tokio::test]
async fn an_idle_room_shows_as_hibernated_in_the_console() {
    let server = Server::start(&["--in-memory", "--hibernate-after-ms", "100"]);
    let project = project();
    let _client = server.connect("runtime", &project).await;
    poll_until(
        "the room to hibernate",
        std::time::Duration::from_millis(50),
        async || {
            server
                .get(&format!("/console/api/projects?q={project}"))
                .await
                .1
        },
        |page| page["projects"][0]["hibernated"] == true,
    )
    .await;
}

#[tokio::test]
async fn with_a_secret_the_console_lists_only_what_the_token_grants() {
    let server = secured(&["--in-memory"]);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let acme = format!("acme-{suffix}");
    let beta = format!("beta-{suffix}");
    let mut clients = Vec::new();
    for project in [&acme, &beta] {
        let token = grant(project, &["runtime"]);
        let (ws, _) = within(tokio_tungstenite::connect_async(
            server.url(&format!("type=runtime&projectId={project}&token={token}")),
        ))
        .await
        .expect("connect with a token");
        clients.push(Client::hello(ws).await);
    }
    let list = async |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        server
            .request(&format!(
                "GET /console/api/projects?q={suffix} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"
            ))
            .await
    };
    let (status, body) = list(None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token")),
        "{body}"
    );
    let (status, body) = list(Some(&grant("*", &["runtime"]))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_required")),
        "{body}"
    );
    let ids = |body: &Value| -> Vec<String> {
        body["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["projectId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = list(Some(&grant("acme-*", &["admin"]))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![acme.clone()]);
    assert_eq!(
        body["total"], 1,
        "the total counts only what the token sees"
    );
    let (_, body) = list(Some(&grant("*", &["admin"]))).await;
    assert_eq!(ids(&body), vec![acme, beta]);

    // The pages themselves hold no project's data and need no token.
    let (status, head) = server
        .request_text("GET /console HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 200);
    assert!(head.contains("<title>wsroom console</title>"));
}

#[tokio::test]
async fn the_console_s_files_come_with_their_types_and_a_strict_policy() {
    let server = Server::start(&["--in-memory"]);
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = server
            .exchange(&format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            ))
            .await
            .to_ascii_lowercase();
        assert!(
            response.starts_with("http/1.1 200"),
            "{path}: {response:.200}"
        );
        assert!(
            response.contains(&format!("content-type: {content_type}")),
            "{path}"
        );
        assert!(
            response.contains("content-security-policy: default-src 'none'; script-src 'self'")
        );
        assert!(response.contains("x-content-type-options: nosniff"));
    }
    let (status, body) = server.get("/console/nothing.js").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = server
        .request(
            "POST /console HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

// ---- in a real browser ----------------------------------------------------------

/// A chromedriver on a port of its choosing and one headless Chromium
/// session through it; both end with this value (chromedriver runs in a
/// process group of its own, Chromium in it, and the group is killed).
/// One at a time: two cores do not start several Chromiums quickly.
struct Chromium {
    browser: Option<Browser>,
    driver: Child,
    profile: std::path::PathBuf,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long Chromium may take to start (longer than [`TIMEOUT`]: on two
/// busy cores its first start has taken seconds).
const BROWSER_START: std::time::Duration = std::time::Duration::from_secs(30);

impl Chromium {
    async fn start() -> Chromium {
        let one_at_a_time = BROWSERS.lock().await;
        let chromedriver =
            std::env::var("WSROOM_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium =
            std::env::var("WSROOM_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {chromedriver} ({e}): the console's tests need Chromium and \
                     its driver (Debian: apt-get install chromium chromium-driver; .ci/run \
                     installs them)"
                )
            });
        let stdout = driver.stdout.take().unwrap();
        let port = tokio::task::spawn_blocking(move || {
            // "ChromeDriver was started successfully on port 38173."
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| {
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                        .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                })
        });
        let port = within(port)
            .await
            .unwrap()
            .expect("chromedriver did not say its port");
        let profile = scratch_dir("chromium-profile");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = tokio::time::timeout(
            BROWSER_START,
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("headless Chromium did not start in time")
        .unwrap_or_else(|e| panic!("cannot start headless Chromium ({chromium}): {e}"));
        Chromium {
            browser: Some(browser),
            driver,
            profile,
            _one_at_a_time: one_at_a_time,
        }
    }

    fn browser(&self) -> &Browser {
        self.browser.as_ref().unwrap()
    }

    async fn goto(&self, url: &str) {
        within(self.browser().goto(url)).await.expect("navigate");
    }

    /// Runs `script` (a function body returning a JSON value) in the page.
    async fn eval(&self, script: &str) -> Value {
        within(self.browser().execute(script, vec![]))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until `done` holds for its value (see [`poll_until`]).
    async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        poll_until(
            what,
            std::time::Duration::from_millis(50),
            async || self.eval(script).await,
            done,
        )
        .await
    }

    /// Types `payload` into the test form's payload box and sends the form.
    async fn send_payload(&self, payload: &str) {
        let b = self.browser();
        within(async {
            let field = b.find(Locator::Id("payload")).await?;
            field.clear().await?;
            field.send_keys(payload).await?;
            b.find(Locator::Css("#send-form button[type=submit]"))
                .await?
                .click()
                .await
        })
        .await
        .expect("send the test form");
    }

    /// What the test form says of the last send.
    async fn send_result(&self) -> String {
        let script = "return document.getElementById('send-result').textContent";
        self.eval(script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits for the element `id` to be shown (`hidden` false).
    async fn wait_shown(&self, id: &str, what: &str) {
        let script = format!("return document.getElementById({}).hidden", json!(id));
        self.wait_for(what, &script, |v| v == false).await;
    }

    /// Opens `project`'s page and waits for its feed to be connected.
    async fn open_project_page(&self, server: &Server, project: &str) {
        self.goto(&format!(
            "http://{}/console?projectId={project}",
            server.addr
        ))
        .await;
        self.wait_feed_live().await;
    }

    /// Waits for the project page's admin feed to be connected.
    async fn wait_feed_live(&self) {
        self.wait_for(
            "the console's admin feed to connect",
            "return document.getElementById('feed-state').textContent",
            |v| v == "(live)",
        )
        .await;
    }

    /// Saves a screenshot as `target/tmp/console-{name}.png`.
    async fn screenshot(&self, name: &str) {
        let png = within(self.browser().screenshot())
            .await
            .expect("screenshot");
        let path =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
    }

    async fn close(mut self) {
        if let Some(browser) = self.browser.take() {
            let _ = within(browser.close()).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started (left
        // behind if a test failed before closing its session).
        if let Ok(group) = i32::try_from(self.driver.id()) {
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The cells of the project list's row for `project` (null while absent).
fn project_row(project: &str) -> String {
    format!(
        "const row = [...document.querySelectorAll('#projects tbody tr')]\
            .find(r => r.dataset.projectId === {project});\
         return row ? [...row.cells].map(c => c.textContent) : null;",
        project = json!(project)
    )
}

/// The client ids the project page lists.
const CLIENT_IDS: &str =
    "return [...document.querySelectorAll('#clients tbody tr')].map(r => r.dataset.clientId);";

/// The feed's entries, newest first, as text.
const FEED: &str = "return [...document.querySelectorAll('#feed li')].map(li => li.innerText);";

#[tokio::test]
async fn the_project_list_shows_a_new_project_without_a_reload() {
    // The room stays live (not hibernated) however long the page takes.
    let server = Server::start(&["--in-memory", "--hibernate-after-ms", "600000"]);
    let chromium = Chromium::start().await;
    chromium
        .goto(&format!("http://{}/console", server.addr))
        .await;
    chromium
        .wait_shown("overview", "the project list to load")
        .await;
    let project = format!("new-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(chromium.eval(&project_row(&project)).await, Value::Null);
    let _a = server.connect("runtime", &project).await;
    let _b = server.connect("data-agent", &project).await;
    let row = chromium
        .wait_for("the new project in the list", &project_row(&project), |v| {
            v[2].as_str()
                .is_some_and(|t| t.contains("runtime 1") && t.contains("data-agent 1"))
        })
        .await;
    // projectId, clients, by type, messages/s, room, component
    assert_eq!(row[0], project.as_str(), "{row}");
    assert_eq!(row[1], "2", "{row}");
    assert_eq!(row[4], "live", "{row}");
    // The charts have drawn from /health.
    chromium
        .wait_for(
            "the connections chart",
            "return document.querySelector('#charts figcaption').innerText",
            |v| v.as_str().is_some_and(|t| t.contains("connections 2")),
        )
        .await;
    chromium.screenshot("projects").await;
    chromium.close().await;
}

#[tokio::test]
async fn a_project_page_shows_clients_and_routed_messages_live() {
    let server = Server::start(&["--in-memory"]);
    let project = project();
    let chromium = Chromium::start().await;
    chromium.open_project_page(&server, &project).await;
    let mut runtime = server.connect("runtime", &project).await;
    let mut agent = server.connect("data-agent", &project).await;
    chromium
        .wait_for("both clients listed", CLIENT_IDS, |v| {
            let ids = v.to_string();
            ids.contains(&runtime.id) && ids.contains(&agent.id)
        })
        .await;
    runtime
        .send_json(&json!({"id": "m-1", "type": "telemetry", "payload": {"cpu": 0.25}, "to": {"type": "data-agent"}}))
        .await;
    assert_eq!(agent.next_json().await["type"], "telemetry");
    chromium
        .wait_for("the routed message in the feed", FEED, |v| {
            v.as_array().is_some_and(|items| {
                items.iter().any(|i| {
                    let t = i.as_str().unwrap_or("");
                    t.contains("telemetry") && t.contains("\"cpu\":0.25") && t.contains(&runtime.id)
                })
            })
        })
        .await;
    chromium.screenshot("project").await;
    agent.close().await;
    chromium
        .wait_for("the client that left gone from the list", CLIENT_IDS, |v| {
            let ids = v.to_string();
            ids.contains(&runtime.id) && !ids.contains(&agent.id)
        })
        .await;
    chromium
        .wait_for("client_left in the feed", FEED, |v| {
            v.as_array().is_some_and(|items| {
                items.iter().any(|i| {
                    let t = i.as_str().unwrap_or("");
                    t.contains("client_left") && t.contains(&agent.id)
                })
            })
        })
        .await;
    // Pause holds new messages back until resumed.
    chromium
        .eval("document.getElementById('pause').click(); return null;")
        .await;
    runtime
        .send_json(&json!({"id": "m-2", "type": "while-paused", "payload": 2}))
        .await;
    chromium
        .wait_for(
            "the paused feed to count the message",
            "return document.getElementById('feed-waiting').textContent",
            |v| v == "1 waiting",
        )
        .await;
    assert!(
        !chromium
            .eval(FEED)
            .await
            .to_string()
            .contains("while-paused")
    );
    chromium
        .eval("document.getElementById('pause').click(); return null;")
        .await;
    assert!(
        chromium
            .eval(FEED)
            .await
            .to_string()
            .contains("while-paused")
    );
    chromium.close().await;
}

#[tokio::test]
async fn the_console_s_test_message_reaches_a_real_client() {
    let server = Server::start(&["--in-memory"]);
    let project = project();
    // Connected once the browser is up (waiting for it, the client would
    // answer no ping).
    let chromium = Chromium::start().await;
    let mut target = server.connect("runtime", &project).await;
    chromium.open_project_page(&server, &project).await;
    let b = chromium.browser();
    within(async {
        b.find(Locator::Id("to-kind"))
            .await?
            .select_by_value("id")
            .await?;
        b.find(Locator::Id("to-value"))
            .await?
            .send_keys(&target.id)
            .await?;
        let kind = b.find(Locator::Id("message-type")).await?;
        kind.clear().await?;
        kind.send_keys("ping-from-console").await?;
        Ok::<_, fantoccini::error::CmdError>(())
    })
    .await
    .expect("fill in the form");
    chromium.send_payload(r#"{"n": 7}"#).await;
    let got = target.next_json().await;
    assert_eq!(got["type"], "ping-from-console", "{got}");
    assert_eq!(got["payload"], json!({"n": 7}));
    assert_eq!(
        got["from"]["type"], "admin",
        "sent as the console's admin client"
    );
    let result = chromium.send_result().await;
    assert!(result.starts_with("sent "), "{result}");

    // A payload that is not JSON is caught in the page, and nothing is sent.
    chromium.send_payload("{oops").await;
    let result = chromium.send_result().await;
    assert!(result.contains("not JSON"), "{result}");
    target.expect_silence(300).await;
    chromium.close().await;
}

#[tokio::test]
async fn with_a_secret_the_console_shows_nothing_until_given_an_admin_token() {
    let server = secured(&["--in-memory"]);
    let project = format!("secret-{}", uuid::Uuid::new_v4().simple());
    let token = grant(&project, &["runtime"]);
    let chromium = Chromium::start().await;
    let (ws, _) = within(tokio_tungstenite::connect_async(
        server.url(&format!("type=runtime&projectId={project}&token={token}")),
    ))
    .await
    .expect("connect with a token");
    let client = Client::hello(ws).await;
    let page_text = "return document.body.innerText";

    // Without a token: the token form, and nothing of any project.
    for path in [
        "/console".to_owned(),
        format!("/console?projectId={project}"),
    ] {
        chromium
            .goto(&format!("http://{}{path}", server.addr))
            .await;
        chromium.wait_shown("token-panel", "the token form").await;
        // Let every poll come back refused before looking.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let text = chromium.eval(page_text).await.to_string();
        assert!(!text.contains(&client.id), "{path}: {text}");
        let rows = chromium
            .eval("return document.querySelectorAll('#projects tbody tr, #clients tbody tr, #feed li').length")
            .await;
        assert_eq!(rows, 0, "{path}");
        if path == "/console" {
            assert!(!text.contains(&project), "{path}: {text}");
        }
    }
    chromium.screenshot("token").await;

    // With an admin token for the project: its clients, and the live feed
    // (the token goes as a WebSocket subprotocol).
    let admin = grant(&project, &["admin"]);
    let b = chromium.browser();
    within(async {
        b.find(Locator::Id("token-input"))
            .await?
            .send_keys(&admin)
            .await?;
        b.find(Locator::Css("#token-form button"))
            .await?
            .click()
            .await
    })
    .await
    .expect("enter the token");
    chromium
        .wait_for("the client listed", CLIENT_IDS, |v| {
            v.to_string().contains(&client.id)
        })
        .await;
    chromium.wait_feed_live().await;
    let url = chromium.eval("return location.href").await;
    assert!(
        !url.to_string().contains(&admin),
        "the token stays out of the URL: {url}"
    );
    chromium.close().await;
}
