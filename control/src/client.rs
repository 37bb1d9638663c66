//! Connecting to a running sluice's control API, over a Unix socket or TCP.

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::ControlAddr;
use crate::proto::control_client::ControlClient;

#[derive(Debug, thiserror::Error)]
#[error("cannot reach sluice at {addr}: {source}; is `sluice run` up, and is this its --control?")]
pub struct ConnectError {
    pub addr: String,
    #[source]
    pub source: tonic::transport::Error,
}

pub async fn connect(addr: &ControlAddr) -> Result<ControlClient<Channel>, ConnectError> {
    let err = |source| ConnectError {
        addr: addr.to_string(),
        source,
    };
    let channel = match addr {
        ControlAddr::Tcp(a) => {
            Endpoint::try_from(format!("http://{a}"))
                .map_err(err)?
                .connect()
                .await
        }
        ControlAddr::Unix(path) => {
            let path = path.clone();
            // The URI is ignored by the connector; tonic needs a syntactically valid one.
            Endpoint::try_from("http://[::1]:1")
                .map_err(err)?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
    }
    .map_err(err)?;
    Ok(ControlClient::new(channel))
}
