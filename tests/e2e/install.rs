//! What ships for installing: the Dockerfile's runtime stage run on this
//! host as a container would run it (no container engine or registry is
//! reachable here, so the image itself is not built): the binary alone in
//! a root of its own, as the unprivileged user, configured by the image's
//! environment, checked by the image's HEALTHCHECK command, stopped by its
//! stop signal. And `wsroom health`, the command that check runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// The Dockerfile's last stage, the one that runs.
struct RuntimeStage {
    user: String,
    uid: u32,
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    healthcheck: Vec<String>,
    exposed: String,
    copied_to: String,
}

fn json_array(line: &str) -> Vec<String> {
    let array = &line[line.find('[').expect("an exec-form array")..];
    serde_json::from_str(array).unwrap()
}

impl RuntimeStage {
    fn read() -> RuntimeStage {
        let dockerfile = include_str!("../../Dockerfile").replace("\\\n", " ");
        let stage = dockerfile.rsplit("\nFROM ").next().unwrap();
        let lines: Vec<&str> = stage.lines().map(str::trim).collect();
        let find = |word: &str| -> &str {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(word))
                .unwrap_or_else(|| panic!("the runtime stage has no {word}"))
                .trim()
        };
        let useradd = find("RUN useradd");
        let uid = useradd
            .split_whitespace()
            .skip_while(|w| *w != "--uid")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let env = find("ENV ")
            .split_whitespace()
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let copy = find("COPY --from=build");
        RuntimeStage {
            user: find("USER ").to_owned(),
            uid,
            env,
            entrypoint: json_array(find("ENTRYPOINT")),
            healthcheck: json_array(find("HEALTHCHECK")),
            exposed: find("EXPOSE ").to_owned(),
            copied_to: copy.split_whitespace().last().unwrap().to_owned(),
        }
    }

    fn env(&self, key: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == key).unwrap().1
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn uid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `path` of the image, under `root`.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Runs `wsroom health` as the image's HEALTHCHECK does, with `url`.
fn health_check(root: &Path, stage: &RuntimeStage, url: &str) -> std::process::Output {
    let mut check = stage.healthcheck.iter();
    let binary = inside(root, check.next().unwrap());
    Command::new(binary)
        .args(check)
        .args(["--url", url])
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_image_runs_as_its_user_with_its_environment_and_passes_its_health_check() {
    let stage = RuntimeStage::read();
    assert_ne!(stage.user, "root");
    assert_ne!(stage.uid, 0);
    assert_eq!(stage.entrypoint, [stage.copied_to.as_str()]);
    assert_eq!(stage.healthcheck, [stage.copied_to.as_str(), "health"]);
    let listen = stage.env("WSROOM_LISTEN");
    assert!(listen.ends_with(&format!(":{}", stage.exposed)), "{listen}");
    // The image's root: the binary where COPY puts it, the user's home.
    let root = scratch_dir("image");
    let home = inside(&root, stage.env("HOME"));
    std::fs::create_dir_all(&home).unwrap();
    let binary = inside(&root, &stage.copied_to);
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_wsroom"), &binary).unwrap();
    // As root (CI), the server runs as the image's user, who owns only its
    // home; otherwise as whoever runs the tests.
    let mut command = if is_root() {
        Command::new("chown")
            .args([format!("{0}:{0}", stage.uid), home.display().to_string()])
            .status()
            .unwrap();
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={}", stage.uid),
            format!("--regid={}", stage.uid),
            "--clear-groups".into(),
        ])
        .arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    command.current_dir(&home);
    for (key, value) in &stage.env {
        let value = if value.starts_with('/') {
            inside(&root, value).display().to_string()
        } else {
            value.clone()
        };
        command.env(key, value);
    }
    // Loopback only in tests: the image's 0.0.0.0 becomes 127.0.0.1:0.
    let server = Server::spawn_with(command, &[]);
    if is_root() {
        assert_eq!(uid_of(server.pid()), stage.uid);
    }
    // Its durable store went where the image's environment says.
    assert!(inside(&root, stage.env("WSROOM_DATA_DIR")).is_dir());
    let health = health_check(&root, &stage, &format!("http://{}/health", server.addr));
    assert!(health.status.success(), "{health:?}");
    assert!(String::from_utf8_lossy(&health.stdout).contains("\"healthy\""));
    let ready = health_check(
        &root,
        &stage,
        &format!("http://{}/health?ready", server.addr),
    );
    assert!(ready.status.success(), "{ready:?}");
    // Without --url, as the HEALTHCHECK runs it: /health at WSROOM_LISTEN.
    let mut check = stage.healthcheck.iter();
    let by_default = Command::new(inside(&root, check.next().unwrap()))
        .args(check)
        .env("WSROOM_LISTEN", server.addr.to_string())
        .output()
        .unwrap();
    assert!(by_default.status.success(), "{by_default:?}");
    // Stopped as `docker stop` does: SIGTERM, a clean exit.
    assert!(server.terminate().success());
    let gone = health_check(&root, &stage, "http://127.0.0.1:1/health");
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot connect"));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn readiness_fails_at_a_limit_and_the_health_command_says_so() {
    let server = Server::start(&["--max-connections", "1"]);
    let url = format!("http://{}/health?ready", server.addr);
    let check = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .args(["health", "--url", url])
            .output()
            .unwrap()
    };
    assert!(check(&url).status.success());
    let _c = server.connect("runtime", &project()).await;
    let (status, health) = server.get("/health?ready").await;
    assert_eq!(status, 503);
    assert_eq!(health["ready"], false);
    // (--max-rooms defaults to --max-connections: both are reached.)
    assert_eq!(health["atLimits"][0], "connections", "{health}");
    // Liveness stays: /health without `ready` answers 200.
    let (status, health) = server.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    let failed = check(&url);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("503"),
        "{failed:?}"
    );
    // HEAD /health, as load balancers send it.
    let head = server
        .exchange("HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
}

#[test]
fn the_systemd_unit_is_valid_and_reloads_with_sighup() {
    let unit = include_str!("../../contrib/systemd/wsroom.service");
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    assert!(unit.contains("\nKillSignal=SIGTERM\n"));
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not checked");
        return;
    };
    let dir = scratch_dir("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsroom.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/wsroom", env!("CARGO_BIN_EXE_wsroom")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where `program` is on the PATH.
fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
