//! Where a VM's serial console (COM1) writes and where its input comes from.
//!
//! By default the guest writes to the configuration's `serial_out` file or to the
//! process's stdout, and reads the process's stdin (a duplicate of fd 0, so the VM never
//! closes it). An embedding program can give each VM its own sink, any [`Write`] or a
//! channel, and its own input, or none:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (console, lines) = hearth::Console::new().no_input().channel();
//! let vm = hearth::Vm::with_console(&hearth::VmConfig::new("vmlinux"), console)?;
//! let running = vm.start()?;
//! for chunk in lines.iter().take(10) {
//!     print!("{}", String::from_utf8_lossy(&chunk));
//! }
//! running.shutdown();
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};

use crate::device_manager::DeviceError;

/// Where the guest's console output goes.
enum Output {
    /// The configuration's `serial_out` file, or stdout.
    Configured,
    /// A sink the program gave.
    Writer(Box<dyn Write + Send>),
}

/// Where the guest's console input comes from.
#[derive(Debug, Default)]
#[non_exhaustive]
pub enum ConsoleInput {
    /// The process's stdin (duplicated).
    #[default]
    Stdin,
    /// No input: the guest's receive side stays empty.
    None,
    /// A file descriptor that can be waited on with epoll: a pipe, a socket, a terminal
    /// (not a regular file).
    File(File),
}

/// A VM's console: its output sink and its input source.
pub struct Console {
    output: Output,
    input: ConsoleInput,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field(
                "output",
                &match self.output {
                    Output::Configured => "serial_out or stdout",
                    Output::Writer(_) => "the program's writer",
                },
            )
            .field("input", &self.input)
            .finish()
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// The default: output to `serial_out` or stdout, input from stdin.
    pub fn new() -> Self {
        Self {
            output: Output::Configured,
            input: ConsoleInput::Stdin,
        }
    }

    /// Sends the guest's output to `writer` (instead of `serial_out` or stdout).
    pub fn output(mut self, writer: impl Write + Send + 'static) -> Self {
        self.output = Output::Writer(Box::new(writer));
        self
    }

    /// Sends the guest's output, as the chunks the guest writes, to the returned channel.
    pub fn channel(self) -> (Self, Receiver<Vec<u8>>) {
        let (tx, rx) = channel();
        (self.output(ChannelWriter(tx)), rx)
    }

    /// Gives the guest no input.
    pub fn no_input(mut self) -> Self {
        self.input = ConsoleInput::None;
        self
    }

    /// Gives the guest this input.
    pub fn input(mut self, input: ConsoleInput) -> Self {
        self.input = input;
        self
    }

    /// The output sink and input file the serial device gets.
    pub(crate) fn open(
        self,
        serial_out: Option<&Path>,
    ) -> Result<(Box<dyn Write + Send>, Option<File>), DeviceError> {
        let out: Box<dyn Write + Send> = match (self.output, serial_out) {
            (Output::Writer(w), _) => w,
            (Output::Configured, Some(path)) => {
                Box::new(File::create(path).map_err(|source| DeviceError::SerialOut {
                    path: path.to_owned(),
                    source,
                })?)
            }
            (Output::Configured, None) => Box::new(std::io::stdout()),
        };
        let input = match self.input {
            ConsoleInput::Stdin => stdin_for_guest(),
            ConsoleInput::None => None,
            ConsoleInput::File(f) => Some(f),
        };
        Ok((out, input))
    }
}

/// A [`Write`] that sends each write down a channel; once the receiver is gone the
/// output is dropped (the guest must not stall on it).
#[derive(Debug)]
pub struct ChannelWriter(pub Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A duplicate of the process's stdin, for the guest to read.
fn stdin_for_guest() -> Option<File> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    Some(File::from(fd))
}
