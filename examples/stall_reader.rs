//! Hostile client (experiment, not committed): pipelines consumeBatch calls and never reads a reply.
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
struct NeverRead(tokio::net::TcpStream);
impl AsyncRead for NeverRead {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}
impl AsyncWrite for NeverRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args[1].clone();
    let calls: usize = args[2].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let client = std::rc::Rc::new(proglog::client::Client::over(
            NeverRead(tcp),
            Default::default(),
        ));
        let mut held = Vec::new();
        for i in 0..calls {
            let c = client.clone();
            held.push(tokio::task::spawn_local(async move {
                let _ = c.consume_batch("", 0, 64, 0).await;
            }));
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        eprintln!("sent {calls} calls");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
}
