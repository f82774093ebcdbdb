//! boringtun in user space: one tokio task owns the [`Engine`], the TUN device and the UDP
//! socket; reloads and status queries reach it over a channel, so no lock is on the packet path.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::engine::{ApplyReport, Engine, Output};
use super::tun::TunDevice;
use super::{DeviceStatus, WgDeviceConfig, WgError};

/// How often the timers (handshake retry, rekey, keepalive) run; WireGuard's own granularity.
const TICK: Duration = Duration::from_millis(250);

enum Command {
    Apply(
        Box<WgDeviceConfig>,
        oneshot::Sender<Result<ApplyReport, WgError>>,
    ),
    Status(oneshot::Sender<DeviceStatus>),
}

/// A running user-space WireGuard interface; dropping it stops the task and removes the device.
pub struct UserspaceDevice {
    interface: String,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn io_err(cfg: &WgDeviceConfig, op: &str) -> impl FnOnce(std::io::Error) -> WgError {
    let interface = cfg.interface.clone();
    let op = op.to_owned();
    move |source| WgError::Io {
        interface,
        op,
        source,
    }
}

/// Binds the dual-stack wildcard, or IPv4 only where IPv6 is disabled.
async fn bind(cfg: &WgDeviceConfig) -> Result<UdpSocket, WgError> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cfg.listen_port));
    match UdpSocket::bind(v6).await {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], cfg.listen_port)))
            .await
            .map_err(io_err(cfg, &format!("bind UDP port {}", cfg.listen_port))),
    }
}

impl UserspaceDevice {
    /// Creates the TUN device and the socket and starts the task. Must be called inside a
    /// tokio runtime, on a thread in the network namespace the device belongs in.
    pub async fn start(cfg: &WgDeviceConfig) -> Result<UserspaceDevice, WgError> {
        let engine = Engine::new(cfg)?;
        let tun =
            TunDevice::create(&cfg.interface, cfg.mtu).map_err(io_err(cfg, "create TUN device"))?;
        let socket = bind(cfg).await?;
        let (tx, rx) = mpsc::channel(8);
        info!(
            interface = %cfg.interface,
            port = cfg.listen_port,
            mtu = cfg.mtu,
            peers = cfg.peers.len(),
            "started user-space WireGuard (boringtun)"
        );
        let task = tokio::spawn(run(engine, tun, socket, rx, cfg.clone()));
        Ok(UserspaceDevice {
            interface: cfg.interface.clone(),
            commands: tx,
            task,
        })
    }

    /// Applies a reloaded configuration (see [`Engine::apply`]); the MTU and listen port are
    /// changed in place.
    pub async fn apply(&self, cfg: &WgDeviceConfig) -> Result<ApplyReport, WgError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Apply(Box::new(cfg.clone()), tx))
            .await
            .map_err(|_| WgError::Stopped(self.interface.clone()))?;
        rx.await
            .map_err(|_| WgError::Stopped(self.interface.clone()))?
    }

    /// Peers and counters.
    pub async fn status(&self) -> Result<DeviceStatus, WgError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(tx))
            .await
            .map_err(|_| WgError::Stopped(self.interface.clone()))?;
        rx.await
            .map_err(|_| WgError::Stopped(self.interface.clone()))
    }
}

async fn run(
    mut engine: Engine,
    tun: TunDevice,
    mut socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    mut cfg: WgDeviceConfig,
) {
    let mut tun_buf = vec![0u8; 65_536];
    let mut udp_buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = tun.recv(&mut tun_buf) => match r {
                Ok(n) => engine.from_tun(&tun_buf[..n], &mut out),
                Err(e) => warn!(interface = %tun.name(), error = %e, "TUN read failed"),
            },
            r = socket.recv_from(&mut udp_buf) => match r {
                Ok((n, src)) => engine.from_network(canonical(src), &udp_buf[..n], &mut out),
                Err(e) => debug!(interface = %tun.name(), error = %e, "UDP receive failed"),
            },
            _ = ticker.tick() => engine.tick(&mut out),
            c = commands.recv() => match c {
                None => return,
                Some(Command::Status(reply)) => {
                    let _ = reply.send(engine.status("userspace"));
                }
                Some(Command::Apply(new, reply)) => {
                    let r = engine.apply(&new);
                    if r.is_ok() {
                        if new.mtu != cfg.mtu {
                            if let Err(e) = tun.set_mtu(new.mtu) {
                                warn!(interface = %tun.name(), error = %e, "MTU change failed");
                            }
                        }
                        if new.listen_port != cfg.listen_port {
                            match bind(&new).await {
                                Ok(s) => socket = s,
                                Err(e) => warn!(error = %e, "keeping the old listen port"),
                            }
                        }
                        cfg = *new;
                    }
                    let _ = reply.send(r);
                }
            },
        }
        for o in out.drain(..) {
            match o {
                Output::Network(dst, d) => {
                    if let Err(e) = socket.send_to(&d, for_socket(&socket, dst)).await {
                        debug!(%dst, error = %e, "UDP send failed");
                    }
                }
                Output::Tun(p) => {
                    if let Err(e) = tun.send(&p).await {
                        debug!(error = %e, "TUN write failed");
                    }
                }
            }
        }
    }
}

/// A v4-mapped address from the dual-stack socket as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// An IPv4 destination on a dual-stack IPv6 socket must be given v4-mapped.
fn for_socket(socket: &UdpSocket, dst: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), dst) {
        (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => dst,
    }
}
