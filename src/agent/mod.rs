//! `meshpath agent`: one node's dataplane workers and its control task, from one configuration file.

pub mod config;
