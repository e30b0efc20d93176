//! The status port: `/healthz`, JSON `/stats` and Prometheus `/metrics`, over plain HTTP/1.1 on tokio.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Stats;

/// Serves requests until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, stats: Arc<Stats>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let answered =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, &stats)).await;
                    if let Ok(Err(e)) = answered {
                        tracing::debug!(error = %e, "status request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "status port: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and writes its response; the connection is closed after it.
async fn answer(mut stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = route(method, path, stats);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(method: &str, path: &str, stats: &Stats) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "use GET\n".to_owned());
    }
    match path {
        "/healthz" => {
            let state = serde_json::to_string(&stats.state()).unwrap_or_default();
            ("200 OK", TEXT, format!("ok {}\n", state.trim_matches('"')))
        }
        "/stats" => {
            let body = serde_json::to_string_pretty(&stats.snapshot()).unwrap_or_default();
            ("200 OK", "application/json", body + "\n")
        }
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&stats.snapshot()),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "not found; try /healthz, /stats or /metrics\n".to_owned(),
        ),
    }
}
