//! `wsroom health`: the client side of `/health`, for a container's or a
//! supervisor's health check where no HTTP client is installed (the image
//! runs the binary alone). One plain HTTP/1.1 GET, `Connection: close`.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Most bytes of an answer read (a `/health` body is a few hundred).
const MAX_ANSWER: u64 = 1 << 20;

/// The `/health` URL of a server listening on `listen`: a wildcard address
/// is asked on loopback.
pub fn local_health_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!(
        "http://{}/health",
        std::net::SocketAddr::new(ip, listen.port())
    )
}

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
    let connected = match url.host() {
        Some(url::Host::Ipv4(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
        Some(url::Host::Ipv6(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
        _ => tokio::net::TcpStream::connect((host, port)).await,
    };
    let mut stream = connected.with_context(|| format!("cannot connect to {host}:{port}"))?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        let url = |listen: &str| super::local_health_url(listen.parse().unwrap());
        assert_eq!(url("0.0.0.0:8787"), "http://127.0.0.1:8787/health");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000/health");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/health");
    }

    /// Serves one connection with `answer` on `listen`; its URL.
    async fn answering(listen: &str, answer: &'static str) -> Option<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind(listen).await.ok()?;
        let addr = listener.local_addr().ok()?;
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = socket.read(&mut request).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        Some(format!("http://{addr}/health?ready"))
    }

    #[tokio::test]
    async fn an_answer_other_than_200_fails_and_ipv6_hosts_are_reached() {
        let ok = answering("127.0.0.1:0", "HTTP/1.1 200 OK\r\n\r\n{}")
            .await
            .unwrap();
        assert_eq!(super::health_check(&ok).await.unwrap(), "{}");
        let busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false}";
        let busy = answering("127.0.0.1:0", busy).await.unwrap();
        let e = super::health_check(&busy).await.unwrap_err().to_string();
        assert!(e.contains("503") && e.contains("ready"), "{e}");
        let garbage = answering("127.0.0.1:0", "SSH-2.0-x\r\n").await.unwrap();
        assert!(super::health_check(&garbage).await.is_err());
        assert!(
            super::health_check("https://127.0.0.1:1/health")
                .await
                .is_err()
        );
        // ::1 is loopback too; a machine without IPv6 cannot bind it.
        if let Some(v6) = answering("[::1]:0", "HTTP/1.1 200 OK\r\n\r\nv6").await {
            assert!(v6.starts_with("http://[::1]:"), "{v6}");
            assert_eq!(super::health_check(&v6).await.unwrap(), "v6");
        }
    }
}
