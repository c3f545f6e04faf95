//! Creating the control socket safely, and checking who connects.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::UnixListener;

use crate::error::Error;

pub struct Bound {
    pub listener: UnixListener,
    pub path: PathBuf,
    ino: u64,
}

/// Bind `path` with mode 0600. A socket nobody answers at is stale and is
/// replaced; one that answers belongs to a running brood: "already running".
pub fn bind(path: &Path) -> Result<Bound, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::usage(format!(
                    "already running: a brood answers at {}",
                    path.display()
                )))
            }
            Err(_) => {
                log::info!("replacing stale socket {}", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| Error::io(format!("cannot remove stale socket {}", path.display()), e))?;
            }
        },
        Ok(_) => {
            return Err(Error::usage(format!(
                "{} exists and is not a socket; not touching it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot inspect {}", path.display()), e)),
    }
    // The socket is born 0600: no window in which another user can connect.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let ino = std::fs::symlink_metadata(path).map(|m| m.ino()).unwrap_or(0);
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        ino,
    })
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
    let me = unsafe { libc::geteuid() };
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!("refused: uid {} is not brood's uid {me}", cred.uid()))
    }
}
