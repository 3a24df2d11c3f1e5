//! Faults of the router's own resources, told apart from faults of the nodes.
//!
//! When the router runs out of file descriptors, memory for socket buffers or local ports, a
//! connection to a perfectly healthy node fails. Counted as the node's failure, such errors would
//! mark node after node unhealthy and move their running rooms elsewhere: a local shortage would
//! split rooms. So every error on the way to a node (the proxy's connects, the health checks) is
//! first asked [`LocalFault::find`]; a local fault answers the client `503` with its reason, is
//! counted under its own metric, and never touches a node's health.

use std::fmt;

/// A shortage of the router's own that made an operation fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalFault {
    /// `EMFILE`: this process has as many files open as its limit allows.
    ProcessFiles,
    /// `ENFILE`: the whole system is out of file descriptors.
    SystemFiles,
    /// `ENOBUFS` or `ENOMEM`: the kernel has no memory for another socket.
    Memory,
    /// `EADDRNOTAVAIL`: no local port or address left to connect from.
    Ports,
}

impl LocalFault {
    /// Every fault, in the order metrics list them.
    pub const ALL: [LocalFault; 4] = [
        LocalFault::ProcessFiles,
        LocalFault::SystemFiles,
        LocalFault::Memory,
        LocalFault::Ports,
    ];

    /// The fault an OS error code stands for, if it is one of the router's own.
    pub fn from_os_error(code: i32) -> Option<LocalFault> {
        match code {
            libc::EMFILE => Some(LocalFault::ProcessFiles),
            libc::ENFILE => Some(LocalFault::SystemFiles),
            libc::ENOBUFS | libc::ENOMEM => Some(LocalFault::Memory),
            libc::EADDRNOTAVAIL => Some(LocalFault::Ports),
            _ => None,
        }
    }

    /// The first local fault in `error` or its chain of causes.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<LocalFault> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(code) = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
            {
                if let Some(fault) = LocalFault::from_os_error(code) {
                    return Some(fault);
                }
            }
            cause = e.source();
        }
        None
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LocalFault::ProcessFiles => "process_files",
            LocalFault::SystemFiles => "system_files",
            LocalFault::Memory => "memory",
            LocalFault::Ports => "ports",
        }
    }
}

impl fmt::Display for LocalFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalFault::ProcessFiles => "the router is out of file descriptors",
            LocalFault::SystemFiles => "the router's system is out of file descriptors",
            LocalFault::Memory => "the router is out of socket memory",
            LocalFault::Ports => "the router is out of local ports",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_anywhere_in_the_chain_and_only_for_local_codes() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let emfile = Wrapper(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(LocalFault::find(&emfile), Some(LocalFault::ProcessFiles));
        let ports = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(LocalFault::find(&ports), Some(LocalFault::Ports));
        let refused = Wrapper(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(LocalFault::find(&refused), None);
        let made_up = std::io::Error::other("no code");
        assert_eq!(LocalFault::find(&made_up), None);
    }
}
