//! `wsroom health`: the client side of `/health`, for a container's or a
//! supervisor's health check where no HTTP client is installed (the image
//! runs the binary alone). One plain HTTP/1.1 GET, `Connection: close`.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Most bytes of an answer read (a `/health` body is a few hundred).
const MAX_ANSWER: u64 = 1 << 20;

/// GETs `url` (`http://HOST:PORT/PATH`) and returns the body when the
/// status is 200; an error saying what came back otherwise.
pub async fn health_check(url: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(url).with_context(|| format!("not a URL: {url}"))?;
    if url.scheme() != "http" {
        bail!(
            "only http:// URLs are checked (this is {}://)",
            url.scheme()
        );
    }
    let host = url.host_str().context("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    match status.split(' ').nth(1) {
        Some("200") => Ok(body.to_owned()),
        Some(_) => bail!("{status}: {body}"),
        None => bail!("not an HTTP answer: {status:?}"),
    }
}
