//! [`Link`]: one TCP connection, TLS or plain, with the peer's address and certificate (the
//! tarpc transport over it is `frames`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::verify::Dial;

/// How long a TLS handshake may take once the TCP connection is up: a peer that dawdles holds
/// a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A connection: its bytes, where it goes, and the certificate the peer presented.
pub struct Link {
    io: Box<dyn Io>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    peer_cert: Option<CertificateDer<'static>>,
}

impl Link {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate the peer presented (its end-entity certificate), if any.
    pub fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        self.peer_cert.as_ref()
    }
}

/// Connects to `addr` and, with `dial`, runs the TLS handshake, verifying the server before
/// anything else is sent; `timeout` bounds both.
pub async fn connect(addr: &str, dial: Option<&Dial>, timeout: Duration) -> io::Result<Link> {
    tokio::time::timeout(timeout, connect_inner(addr, dial))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", timeout.as_secs())))?
}

/// [`connect`] checking the server's certificate against `name` rather than the dial's own.
pub async fn connect_named(addr: &str, dial: &Dial, name: ServerName<'static>, timeout: Duration) -> io::Result<Link> {
    let dial = Dial { config: Arc::clone(&dial.config), name };
    connect(addr, Some(&dial), timeout).await
}

async fn connect_inner(addr: &str, dial: Option<&Dial>) -> io::Result<Link> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (peer_addr, local_addr) = (tcp.peer_addr()?, tcp.local_addr()?);
    let Some(dial) = dial else {
        return Ok(Link { io: Box::new(tcp), peer_addr, local_addr, peer_cert: None });
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&dial.config));
    let tls = connector.connect(dial.name.clone(), tcp).await?;
    let peer_cert = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).cloned();
    Ok(Link { io: Box::new(tls), peer_addr, local_addr, peer_cert })
}

/// Runs the server side of the handshake on an accepted connection (plain with no config).
pub async fn accept(tcp: TcpStream, config: Option<Arc<ServerConfig>>) -> io::Result<Link> {
    tcp.set_nodelay(true)?;
    let (peer_addr, local_addr) = (tcp.peer_addr()?, tcp.local_addr()?);
    let Some(config) = config else {
        return Ok(Link { io: Box::new(tcp), peer_addr, local_addr, peer_cert: None });
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake took too long"))??;
    let peer_cert = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).cloned();
    Ok(Link { io: Box::new(tls), peer_addr, local_addr, peer_cert })
}

/// Whether a connection error is a refused certificate pin: the server's chain does not end
/// at the CA the key pins (or its certificate does not name the controller).
pub fn is_wrong_peer(error: &io::Error) -> bool {
    let Some(inner) = error.get_ref() else { return false };
    match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(_)) => true,
        _ => inner.to_string().contains(super::verify::NOT_PINNED_CA),
    }
}

impl AsyncRead for Link {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut *self.io).poll_read(cx, buf) {
            // A peer that closes its connection without TLS's close_notify alert (every `kiln`
            // command that exits, every killed process) ends the stream as a closed TCP
            // connection does, instead of as an error that tarpc logs as a warning per
            // disconnect. Nothing can be forged this way: frames carry their length, so a
            // connection cut inside a frame is still an error (`frames` finds it unfinished).
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::tls::ca::{ClusterCa, WorkerKey, self_signed};
    use crate::tls::key::Trust;
    use crate::tls::verify::{controller_dial, controller_server, dial_controller, worker_server};
    use crate::tls::worker_name;

    /// Serves one connection with `config`, echoing one line; answers the peer's certificate.
    async fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, tokio::task::JoinHandle<io::Result<Link>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut link = accept(tcp, Some(config)).await?;
            let mut byte = [0u8; 1];
            link.read_exact(&mut byte).await?;
            link.write_all(&byte).await?;
            link.flush().await?;
            Ok(link)
        });
        (addr, server)
    }

    async fn ping(addr: SocketAddr, dial: &Dial) -> io::Result<()> {
        let mut link = connect(&addr.to_string(), Some(dial), Duration::from_secs(5)).await?;
        link.write_all(b"x").await?;
        link.flush().await?;
        let mut byte = [0u8; 1];
        link.read_exact(&mut byte).await?;
        Ok(())
    }

    fn cluster() -> (tempfile::TempDir, ClusterCa) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        (dir, ca)
    }

    #[tokio::test]
    async fn a_client_pinning_the_ca_reaches_its_controller_and_refuses_another() {
        let (_dir, ca) = cluster();
        let own = ca.issue_controller(&["127.0.0.1".to_owned()]).unwrap();
        let dial = dial_controller(Trust::Pinned(ca.fingerprint()), "127.0.0.1:1", None, None).unwrap().unwrap();

        let (addr, server) = serve_once(controller_server(ca.cert(), Arc::clone(&own), None).unwrap()).await;
        ping(addr, &dial).await.unwrap();
        assert!(server.await.unwrap().unwrap().peer_cert().is_none(), "a client shows no certificate");

        // Another cluster's controller, and a self-signed impostor, are refused by the client.
        let (_other_dir, other) = cluster();
        let impostors = [other.issue_controller(&[]).unwrap(), self_signed(crate::tls::CONTROLLER_NAME).unwrap()];
        for impostor in impostors {
            let (addr, _server) = serve_once(controller_server(other.cert(), impostor, None).unwrap()).await;
            let error = ping(addr, &dial).await.unwrap_err();
            assert!(is_wrong_peer(&error), "{error}");
        }
    }

    #[tokio::test]
    async fn a_worker_certificate_cannot_pass_for_the_controller_and_vice_versa() {
        let (_dir, ca) = cluster();
        let key = WorkerKey::generate().unwrap();
        let (cert, _) = ca.issue_worker(3, &key.public_key(), Duration::from_secs(60)).unwrap();
        let worker = key.certified(cert, ca.cert().clone()).unwrap();
        let controller = ca.issue_controller(&[]).unwrap();

        // A worker serving as if it were the controller: clients refuse it.
        let dial = dial_controller(Trust::Pinned(ca.fingerprint()), "127.0.0.1:1", None, None).unwrap().unwrap();
        let (addr, _server) = serve_once(controller_server(ca.cert(), Arc::clone(&worker), None).unwrap()).await;
        assert!(is_wrong_peer(&ping(addr, &dial).await.unwrap_err()));

        // The controller dials the worker back: it checks the worker's name, and the worker
        // checks that the caller is the controller.
        let config = controller_dial(ca.cert(), Arc::clone(&controller)).unwrap();
        let to = |id| Dial { config: Arc::clone(&config), name: ServerName::try_from(worker_name(id)).unwrap() };
        let (addr, server) = serve_once(worker_server(ca.cert(), Arc::clone(&worker)).unwrap()).await;
        ping(addr, &to(3)).await.unwrap();
        assert_eq!(server.await.unwrap().unwrap().peer_cert(), Some(&controller.cert[0]));
        let (addr, _server) = serve_once(worker_server(ca.cert(), Arc::clone(&worker)).unwrap()).await;
        assert!(ping(addr, &to(4)).await.is_err(), "worker 3's certificate passed for worker 4");

        // Another worker calling a worker with its own certificate is refused by the worker.
        let (cert, _) = ca.issue_worker(5, &key.public_key(), Duration::from_secs(60)).unwrap();
        let stranger = key.certified(cert, ca.cert().clone()).unwrap();
        let config = controller_dial(ca.cert(), stranger).unwrap();
        let (addr, server) = serve_once(worker_server(ca.cert(), worker).unwrap()).await;
        let dial = Dial { config, name: ServerName::try_from(worker_name(3)).unwrap() };
        let _ = ping(addr, &dial).await;
        assert!(server.await.unwrap().is_err(), "the worker took a call from another worker");
    }
}
