//! Descriptors handed between the sandbox's init and the supervisor over a UNIX socket pair
//! (`SCM_RIGHTS`): the proxy's listening sockets, new sockets for exposed ports, and the master
//! side of the command's pseudo-terminal. A session's socket (see [`crate::session`]) uses the
//! same calls.
//!
//! The pair is `SOCK_SEQPACKET`, so each hand-over is one message whose payload and
//! descriptors arrive together, and a read of 0 bytes means that the peer closed its end.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Creates the socket pair for one kind of hand-over: the supervisor's end first. Both ends are
/// close-on-exec, so the command inherits neither.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (supervisor, init) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    Ok((supervisor, init))
}

/// Sends `payload` and `fds` as one message. The payload must not be empty, because the
/// receiver reads an empty message as the end of the channel.
pub(crate) fn send(channel: &OwnedFd, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_with(channel.as_fd(), payload, fds, SendFlags::empty())
}

/// Sends like [`send`], with `flags` added to `MSG_NOSIGNAL`, such as `MSG_DONTWAIT` for a
/// caller that waits for the socket itself. A call interrupted by a signal is repeated.
pub(crate) fn send_with(channel: BorrowedFd<'_>, payload: &[u8], fds: &[BorrowedFd<'_>], flags: SendFlags) -> io::Result<()> {
    debug_assert!(!payload.is_empty(), "an empty message reads as a closed channel");
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    loop {
        match rustix::net::sendmsg(channel, &[IoSlice::new(payload)], &mut control, SendFlags::NOSIGNAL | flags) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(drop).map_err(io::Error::from),
        }
    }
}

/// One message read by [`receive`].
pub(crate) struct Received {
    /// Bytes of payload read; 0 when the peer closed its end without sending.
    pub(crate) bytes: usize,
    /// The descriptors that came with the payload, close-on-exec.
    pub(crate) fds: Vec<OwnedFd>,
    /// The payload was longer than the buffer, and the rest of it is lost.
    pub(crate) truncated: bool,
}

/// Reads one message into `payload`, with room for `max_fds` descriptors. Blocks until a
/// message arrives or the peer closes its end. A message that carried more than `max_fds`
/// descriptors is an error, and the kernel closes the ones that did not fit.
pub(crate) fn receive(channel: &OwnedFd, payload: &mut [u8], max_fds: usize) -> io::Result<Received> {
    receive_with(channel.as_fd(), payload, max_fds, RecvFlags::empty())
}

/// Receives like [`receive`], with `flags` added to `MSG_CMSG_CLOEXEC`, such as `MSG_DONTWAIT`.
pub(crate) fn receive_with(channel: BorrowedFd<'_>, payload: &mut [u8], max_fds: usize, flags: RecvFlags) -> io::Result<Received> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(channel, &mut [IoSliceMut::new(payload)], &mut control, RecvFlags::CMSG_CLOEXEC | flags) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    // The control buffer is rounded up to a multiple of 8 bytes, so for an odd `max_fds` one
    // more descriptor fits without truncation.
    if received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the message carried more than the {max_fds} descriptors expected")));
    }
    Ok(Received { bytes: received.bytes, fds, truncated: received.flags.contains(ReturnFlags::TRUNC) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn descriptors_cross_with_their_payload() {
        let (supervisor, init) = pair().unwrap();
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        send(&init, b"p", &[write_end.as_fd()]).unwrap();
        drop(write_end);
        let mut payload = [0u8; 4];
        let received = receive(&supervisor, &mut payload, 1).unwrap();
        assert_eq!(&payload[..received.bytes], b"p");
        assert_eq!(received.fds.len(), 1);
        // The received descriptor is the pipe's write end: what it writes reaches the read end.
        rustix::io::write(&received.fds[0], b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&read_end, &mut byte).unwrap(), 1);
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn too_many_descriptors_are_an_error() {
        let (supervisor, init) = pair().unwrap();
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        send(&init, b"p", &[read_end.as_fd(), write_end.as_fd()]).unwrap();
        let mut payload = [0u8; 1];
        assert!(receive(&supervisor, &mut payload, 1).is_err());
    }

    #[test]
    fn closed_end_reads_as_zero_bytes() {
        let (supervisor, init) = pair().unwrap();
        drop(init);
        let mut payload = [0u8; 1];
        let received = receive(&supervisor, &mut payload, 1).unwrap();
        assert_eq!(received.bytes, 0);
        assert!(received.fds.is_empty());
    }
}
