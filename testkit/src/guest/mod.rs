//! The lab's guest, by job: boot assets ([`assets`]), what a guest is ([`spec`]), its HTTP
//! service ([`app`]) and its serial console ([`console`]).

pub mod app;
pub mod assets;
pub mod console;
pub mod spec;

pub use app::{app_get, app_wait, AppReply};
pub use assets::{setup, Assets};
pub use console::{integrity_after, last_status, status_lines, wait_running, Integrity};
pub use spec::{app_nic_args, GuestSpec, Pattern, APP_GUEST_PORT, APP_NIC_ADDR};
