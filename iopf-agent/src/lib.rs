//! iopf-agent as a library: the binary in main.rs is a thin edge over these modules.

pub mod cli;
pub mod devices;
pub mod doctor;
pub mod error;
pub mod features;
pub mod hooks;
pub mod input;
pub mod iopf;
pub mod kabi;
pub mod lifecycle;
pub mod loader;
pub mod metrics;
pub mod pagefault;
pub mod paths;
pub mod pin;
pub mod policy;
pub mod policy_cmd;
pub mod privs;
pub mod progstats;
pub mod record;
pub mod release;
pub mod run;
pub mod server;
pub mod simulate;
pub mod trace;
pub mod tracefs;
