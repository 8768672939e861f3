//! session-service owns agent sessions: login, channel groups and channels, Ready / Not Ready with
//! reasons, and the multi-step logout of the Logout use case. It is built on interaction-server's
//! public contract (`ixn-proto`) and is not implemented yet.

#![forbid(unsafe_code)]
