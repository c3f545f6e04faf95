//! brood's one error type: a user-facing message and the exit code it maps to.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bad arguments or configuration: exit 2, nothing started.
    Usage,
    /// Something failed while running: exit 1.
    Runtime,
    /// `brood ctl` found no brood at the socket: exit 3.
    NoServer,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

impl Error {
    pub fn usage(message: String) -> Error {
        Error {
            kind: Kind::Usage,
            message,
        }
    }

    pub fn runtime(message: String) -> Error {
        Error {
            kind: Kind::Runtime,
            message,
        }
    }

    pub fn no_server(message: String) -> Error {
        Error {
            kind: Kind::NoServer,
            message,
        }
    }

    /// A failed system call, with what brood was doing.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Error {
        Error::runtime(format!("{context}: {err}"))
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Usage => 2,
            Kind::Runtime => 1,
            Kind::NoServer => 3,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
