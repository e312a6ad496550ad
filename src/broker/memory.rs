//! The in-process broker: single-node mode, no Redis. A publish is handed
//! straight to this node's handler, so it is delivered before `publish`
//! returns (in order, per publisher).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use super::{Broker, BrokerError, BrokerHandler, NodeInfo};
use crate::hub::Member;
use crate::protocol::{Control, Publication};

#[derive(Default)]
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl MemoryBroker {
    pub fn new() -> MemoryBroker {
        MemoryBroker::default()
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not attached".into()))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, publications: Vec<Publication>) -> Result<(), BrokerError> {
        let handler = self.handler()?;
        for p in publications {
            handler.on_publication(p);
        }
        Ok(())
    }

    async fn subscribe(&self, _group: &str, _member: &Member) -> Result<(), BrokerError> {
        // Every publication reaches the handler; the hub filters by group,
        // and presence is read from the hub.
        Ok(())
    }

    async fn unsubscribe(&self, _group: &str, _session: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        self.handler()?.on_control(control);
        Ok(())
    }

    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError> {
        Ok(self.handler()?.local_presence(group))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        Ok(vec![self.handler()?.local_node()])
    }

    fn is_up(&self) -> bool {
        true
    }

    fn attach(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }
}
