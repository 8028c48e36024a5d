//! The coordinator's listeners (the API and Raft): TCP, with TLS unless the configuration says
//! `insecure`, and a bound on open connections.
//!
//! Handshakes run in their own tasks (a slow or silent client cannot hold up the others) with a
//! deadline; a connection reaches the HTTP server only once its handshake is done, carrying the
//! identity of the client's certificate ([`Peer`]), which the API's edge and the Raft server
//! check before they read a request's body. The bound on connections is a semaphore taken
//! before `accept`: past it, new connections wait in the kernel's backlog rather than each
//! costing a task and buffers here.

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
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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
                let conn = Conn { io: Box::new(tcp), _permit: permit };
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
                        let conn = Conn { io: Box::new(stream), _permit: permit };
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
