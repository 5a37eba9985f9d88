"""One epoll for every relayed socket, itself a single reader in the asyncio loop (or, with
no loop, polled by its owner's thread: the Python relay engine, dataplane/relay/engine_py.py).

asyncio's add_reader/add_writer keep a Handle, a selector key and a bound method per socket
and direction, and run every ready socket through a Handle of their own. A forwarder holding
ten thousand mostly idle connections (the IM case) pays that memory for each of them, and
every wake-up pays the indirection. Here each watched socket costs one dict entry pointing at
its Relay, and a wake-up is one epoll_wait for all of them, dispatched in a plain loop.

Level-triggered: a relay that leaves bytes unread is called again on the next loop turn,
after the loop's other ready callbacks (the relay's budget keeps one stream from starving
the rest).
"""
import select

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR, EPOLLHUP = select.EPOLLERR, select.EPOLLHUP
BATCH = 256  # events taken per wake-up


class Poller:
    def __init__(self, loop=None):
        self.loop = loop
        self.ep = select.epoll()
        self.owners = {}  # fd -> object with .event(fd, events)
        if loop is not None:
            loop.add_reader(self.ep.fileno(), self.dispatch)

    def set(self, fd: int, owner, old: int, new: int) -> None:
        """Change what fd is watched for, from mask old to mask new (0: not at all).

        A socket asked for nothing is taken out of epoll rather than left in with an empty
        mask: epoll reports HUP and ERR whatever the mask, and a half-closed socket whose
        relay is waiting on the other side would be reported again on every turn."""
        if new == old:
            return
        if old == 0:
            self.ep.register(fd, new)
            self.owners[fd] = owner
        elif new == 0:
            self.owners.pop(fd, None)
            self.ep.unregister(fd)
        else:
            self.ep.modify(fd, new)

    def __len__(self):
        return len(self.owners)

    def dispatch(self, timeout: float = 0) -> None:
        """Wait up to timeout seconds (-1: for ever) and run the owners of what is ready."""
        owners = self.owners
        for fd, events in self.ep.poll(timeout, BATCH):
            owner = owners.get(fd)  # None: closed by an earlier event of this batch
            if owner is not None:
                owner.event(fd, events)

    def close(self) -> None:
        if self.ep.closed:
            return
        if self.loop is not None:
            self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        self.owners.clear()
