//! The host/OS layer below the sensors: what several sensors need from the
//! operating system (pid listing, executable scanning, sockets and their
//! owners). Sensors depend on this layer, on `net/` and on the signatures
//! crate, never on each other.

pub mod bpf;
pub mod exe;
pub mod iptables;
pub mod netns;
pub mod pids;
pub mod process;
pub mod safefile;
pub mod slurm;
pub mod sockets;
