//! The box's hardware behind traits, each with a Linux backend and a
//! simulated one picked automatically where the hardware is absent, so the
//! box runs anywhere and says which devices are simulated.
//!
//! Today: camera enumeration (V4L2 devices from sysfs; a simulated camera
//! that draws a moving test pattern with a clock) with JPEG snapshots of the
//! simulated one; the status LED patterns and the reset button's long press
//! as sans-IO logic over embedded-hal 1.0 pins.

pub mod button;
pub mod camera;
pub mod font;
pub mod led;
