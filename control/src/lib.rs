//! sluice control plane: sessions (calls, legs, streams), SDP offer/answer, relay port
//! allocation, the gRPC control API and its CLI client.

pub mod b2bua;
pub mod client;
pub mod codecs;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod grpc;
pub mod h2_authority;
pub mod kernel;
pub mod load;
pub mod metrics;
pub mod ng;
pub mod port_alloc;
pub mod sdes;
pub mod sdp;
pub mod session;

pub mod proto {
    //! Generated from `control/proto/sluice.proto` (package `sluice.v1`).
    tonic::include_proto!("sluice.v1");

    /// The compiled `sluice.proto`, served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
}
