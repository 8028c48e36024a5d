//! The coordinator's listeners (the API and Raft): TCP, with TLS unless the configuration says
//! `insecure`, and a bound on open connections.
//!
//! Handshakes run in their own tasks (a slow or silent client cannot hold up the others) with a
//! deadline; a connection reaches the HTTP server only once its handshake is done, carrying the
//! identity of the client's certificate ([`Peer`]), which the API's edge and the Raft server
//! check before they read a request's body. The bound on connections is a semaphore taken
//! before `accept`: past it, new connections wait in the kernel's backlog rather than each
//! costing a task and buffers here.
//!
//! A connection whose writes make no progress for the listener's `write_stall` (the client
//! reads nothing while an answer waits: a stalled or abandoned event subscriber) is ended with
//! an error, so it gives back its connection and subscription slots; a subscriber resumes from
//! its cursor when it reconnects.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use switchyard_tls::{Identity, Tls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity of the client's certificate (TLS with a client certificate only).
    pub identity: Option<Identity>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Connected<IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// One accepted connection: the stream, and its place under the connection bound.
pub struct Conn {
    io: Box<dyn Io>,
    _permit: OwnedSemaphorePermit,
    addr: SocketAddr,
    /// How long a write may wait on the client before the connection ends.
    write_stall: Option<Duration>,
    /// When the write that is waiting now gives up.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    fn new(io: Box<dyn Io>, permit: OwnedSemaphorePermit, addr: SocketAddr, write_stall: Option<Duration>) -> Conn {
        Conn { io, _permit: permit, addr, write_stall, stalled: None }
    }

    /// Passes on a write's outcome, turning one that has waited for the client longer than
    /// `write_stall` into an error. Any progress starts the wait over.
    fn stall_check<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let Some(limit) = self.write_stall else { return outcome };
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let deadline = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::info!(
            peer = %self.addr,
            "a client took nothing for {limit:?} while an answer waited: its connection ends \
             (a subscriber resumes from its cursor)"
        );
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("the client took nothing for {limit:?}"))))
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall_check(cx, outcome)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_flush(cx);
        self.stall_check(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stall_check(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall_check(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Connections ready for the HTTP server.
pub struct Incoming {
    ready: mpsc::Receiver<(Conn, Peer)>,
    local: SocketAddr,
}

impl Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (it never does while this end is open).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer { addr: self.local, identity: None, tls: false })
    }
}

/// What a listener asks of its clients.
pub struct Admission {
    /// TLS material, or plaintext when `None`.
    pub tls: Option<Tls>,
    /// Clients must present a certificate of the cluster's CA (Raft); otherwise they may (API).
    pub clients_required: bool,
    /// Most connections open at once.
    pub connections_max: usize,
    /// How long a write may wait on a client that reads nothing before its connection ends
    /// (`None`: as long as it takes).
    pub write_stall: Option<Duration>,
    /// For logs: which listener.
    pub what: &'static str,
}

/// Accepts on `tcp` in a task of its own, handing connections to the returned listener once
/// they are established.
pub fn incoming(tcp: TcpListener, admission: Admission) -> io::Result<Incoming> {
    let local = tcp.local_addr()?;
    let (tx, ready) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(admission.connections_max.max(1)));
    let acceptor = admission.tls.as_ref().map(|t| TlsAcceptor::from(t.server_config(admission.clients_required)));
    let what = admission.what;
    let write_stall = admission.write_stall;
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = tx.closed() => return,
            };
            let (tcp, addr) = tokio::select! {
                a = tcp.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // TCP_NODELAY: a Raft reply or an event of a subscription must not wait for the
            // peer's delayed ACK of the previous segment (Nagle), up to 40 ms.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(listener = what, error = %e, "cannot set TCP_NODELAY on a connection");
            }
            let Some(acceptor) = acceptor.clone() else {
                let conn = Conn::new(Box::new(tcp), permit, addr, write_stall);
                if tx.send((conn, Peer { addr, identity: None, tls: false })).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(Identity::of_certificate);
                        let conn = Conn::new(Box::new(stream), permit, addr, write_stall);
                        let _ = tx.send((conn, Peer { addr, identity, tls: true })).await;
                    }
                    Ok(Err(e)) => tracing::warn!(listener = what, peer = %addr, error = %e, "TLS handshake refused"),
                    Err(_) => {
                        tracing::warn!(listener = what, peer = %addr, "TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    Ok(Incoming { ready, local })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// A connection over an in-memory pipe of 64 bytes, its writes given up after `stall`.
    async fn pipe(stall: Option<Duration>) -> (Conn, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        (Conn::new(Box::new(server), permit, "127.0.0.1:9".parse().unwrap(), stall), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_has_its_connection_ended_after_the_stall_limit() {
        let (mut conn, _client) = pipe(Some(Duration::from_secs(60))).await;
        conn.write_all(&[1; 64]).await.unwrap();
        let waited = Instant::now();
        let write = tokio::time::timeout(Duration::from_secs(3600), conn.write_all(&[2; 16]));
        let err = write.await.expect("the stalled write gave up").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(waited.elapsed() >= Duration::from_secs(60), "gave up after {:?}", waited.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_keeps_its_connection_as_long_as_each_wait_is_under_the_limit() {
        let (mut conn, mut client) = pipe(Some(Duration::from_secs(60))).await;
        // Reads 16 bytes every 50 s: every write waits, none for 60 s.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0; 16];
            while got < 64 + 256 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            client
        });
        let started = Instant::now();
        conn.write_all(&[1; 64 + 256]).await.unwrap();
        assert!(started.elapsed() > Duration::from_secs(60), "the writes waited {:?} in all", started.elapsed());
        let _client = reader.await.unwrap();
        // The reader stopped: the next write that waits ends the connection.
        conn.write_all(&[2; 64]).await.unwrap();
        let err = conn.write_all(&[3; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_stall_limit_a_write_waits_as_long_as_it_takes() {
        let (mut conn, mut client) = pipe(None).await;
        conn.write_all(&[1; 64]).await.unwrap();
        let write = tokio::spawn(async move { conn.write_all(&[2; 16]).await.map(|()| conn) });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!write.is_finished());
        let mut buf = [0; 80];
        client.read_exact(&mut buf).await.unwrap();
        write.await.unwrap().unwrap();
    }
}
