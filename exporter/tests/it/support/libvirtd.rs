//! Throw-away libvirtd instances for tests: the test kit's [`testkit::Host`] (a private
//! libvirtd in its own mount namespace; several can run at once and migrate between them).
pub use testkit::Host as TestLibvirtd;
