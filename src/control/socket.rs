//! Creating the control socket safely, and checking who connects.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::UnixListener;

use crate::error::Error;

pub struct Bound {
    pub listener: UnixListener,
    pub path: PathBuf,
    ino: u64,
}

/// Why a socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// A brood answers there already: starting a second one is a mistake.
    AlreadyRunning(Error),
    /// The path cannot hold a socket (read-only or foreign directory, a
    /// path too long for `sun_path`, a file in the way): try elsewhere.
    Unusable(Error),
}

impl BindError {
    fn error(self) -> Error {
        match self {
            BindError::AlreadyRunning(e) | BindError::Unusable(e) => e,
        }
    }
}

/// Longest socket path the kernel takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Bind `path` with mode 0600. A socket nobody answers at is stale and is
/// replaced; one that answers belongs to a running brood: "already running".
pub fn bind(path: &Path) -> Result<Bound, BindError> {
    let unusable = |msg: String| BindError::Unusable(Error::usage(msg));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(unusable(format!(
            "cannot listen on {}: the path is longer than a socket path may be ({MAX_SOCKET_PATH} bytes)",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::AlreadyRunning(Error::usage(format!(
                    "already running: a brood answers at {}",
                    path.display()
                ))))
            }
            Err(_) => {
                log::info!("replacing stale socket {}", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| unusable(format!("cannot remove stale socket {}: {e}", path.display())))?;
            }
        },
        Ok(_) => {
            return Err(unusable(format!(
                "{} exists and is not a socket; not touching it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unusable(format!("cannot inspect {}: {e}", path.display()))),
    }
    // The socket is born 0600: no window in which another user can connect.
    // SAFETY: umask takes and returns a mode; brood is single-threaded, so
    // no other thread creates files in the window.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| unusable(format!("cannot listen on {}: {e}", path.display())))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let ino = std::fs::symlink_metadata(path).map(|m| m.ino()).unwrap_or(0);
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        ino,
    })
}

/// The socket of `brood run` on `config`, or None. An explicit `--socket`
/// is used or nothing; the default `.brood.sock` beside the config falls
/// back to a socket in the runtime directory ([`default_paths`]). Supervision never depends on the socket: when
/// no place works brood warns once and runs without one. Only a live brood
/// at the chosen path stops start-up ("already running").
pub fn bind_for_run(config: &Path, explicit: Option<&Path>) -> Result<Option<Bound>, Error> {
    let mut candidates = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => default_paths(config),
    };
    let mut why = Vec::new();
    for path in candidates.drain(..) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        match prepare_dir(dir).and_then(|()| bind(&path)) {
            Ok(bound) => {
                if !why.is_empty() {
                    log::warn!(
                        "control socket at {} ({}); `brood ctl -f CONFIG` finds it",
                        path.display(),
                        why.join("; ")
                    );
                }
                return Ok(Some(bound));
            }
            Err(BindError::AlreadyRunning(e)) => return Err(e),
            Err(e) => why.push(e.error().message),
        }
    }
    log::warn!(
        "running without a control socket, `brood ctl` cannot reach this brood ({})",
        why.join("; ")
    );
    Ok(None)
}

/// Where `brood run` on `config` may listen, in order: `.brood.sock` beside
/// it, then the fallbacks. `brood ctl -f CONFIG` tries the same list.
pub fn default_paths(config: &Path) -> Vec<PathBuf> {
    let beside = absolute(&crate::config::config_dir(config)).join(".brood.sock");
    let mut paths = vec![beside];
    paths.extend(fallback_dirs().into_iter().map(|d| d.join(fallback_name(config))));
    paths
}

/// `brood-HASH.sock`, HASH naming the config file wherever it is reached
/// from (its canonical path).
fn fallback_name(config: &Path) -> String {
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| absolute(config));
    // FNV-1a: stable across builds and Rust versions, unlike DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in canonical.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("brood-{hash:016x}.sock")
}

/// `path` from the root, without `.` components (not resolving links).
fn absolute(path: &Path) -> PathBuf {
    let joined = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    joined
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
}

/// The runtime directories a fallback socket may live in: `$XDG_RUNTIME_DIR`,
/// then `/tmp/brood-UID` (made 0700 by `brood run` when it gets that far).
/// Each must be a directory of ours that nobody else can write to: another
/// user's directory could hand us a socket of theirs.
fn fallback_dirs() -> Vec<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut dirs = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if xdg.is_absolute() && private_dir(&xdg, uid) {
            dirs.push(xdg);
        }
    }
    let tmp = tmp_runtime_dir();
    if std::fs::symlink_metadata(&tmp).is_err() || private_dir(&tmp, uid) {
        dirs.push(tmp);
    }
    dirs
}

fn tmp_runtime_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/brood-{}", nix::unistd::geteuid().as_raw()))
}

/// Makes `/tmp/brood-UID` if it is `dir` and missing; whoever made it, it
/// must be private to us.
fn prepare_dir(dir: &Path) -> Result<(), BindError> {
    if dir != tmp_runtime_dir() {
        return Ok(());
    }
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    if private_dir(dir, nix::unistd::geteuid().as_raw()) {
        Ok(())
    } else {
        Err(BindError::Unusable(Error::usage(format!(
            "{} is not a private directory of ours",
            dir.display()
        ))))
    }
}

/// A real directory (not a symlink) owned by `uid`, writable by no one else.
fn private_dir(dir: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

impl Bound {
    /// Remove the socket file, if it is still ours.
    pub fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The peer's uid must be brood's own, or root.
pub fn peer_allowed(stream: &impl AsFd) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!("refused: uid {} is not brood's uid {me}", cred.uid()))
    }
}
