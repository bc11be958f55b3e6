//! The HTTP side: the bounded listener ([`listener`]), the routes and landing page
//! ([`routes`]) and the web config file (TLS, basic auth: [`web_config`]).

pub mod listener;
pub mod routes;
pub mod web_config;
