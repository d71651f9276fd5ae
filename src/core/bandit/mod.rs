//! Reward-based meta-learning on the wheel bandit (paper §5.5; docs/BANDIT.md): the
//! environment, its tasks as regression tasks of the network models, the bandit agents, the
//! regret bookkeeping, and meta-training of the agents' networks.

pub mod agents;

pub mod posterior;
pub mod run;
pub mod task;
pub mod wheel;

pub use task::{BanditTask, Pulls};
pub use wheel::{ARMS, Context, WheelBandit};
