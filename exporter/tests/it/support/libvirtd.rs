//! Throw-away libvirtd instances for tests: the lab's [`migration_lab::Host`] (a private
//! libvirtd in its own mount namespace; several can run at once and migrate between them).
pub use migration_lab::Host as TestLibvirtd;
