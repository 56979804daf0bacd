"""The blocks of a paged KV cache: who holds which, and which full blocks hold a known prefix.

A sequence's keys and values live in fixed-size blocks of `block_size` positions, listed in its
block table; blocks come from one pool of `num_blocks` and go back to it when the sequence ends.

Prefix caching. A full block is known by the hash of its tokens chained to the hash of the block
before it, h_i = hash((h_{i-1}, tokens of block i)), so equal hashes mean equal prefixes up to and
including that block (the keys and values at a position depend on every token before it). A block
is shared by reference count: a new sequence whose first blocks' hashes are cached takes those
blocks (ref += 1) and skips computing them. A block whose count drops to 0 keeps its hash and its
contents and waits in the free list, oldest first; it is overwritten only when no block without a
cached prefix is left (least recently freed first), so a repeated system prompt stays cached.
"""
from collections import OrderedDict


def chain_hashes(tokens, block_size):
    """Hashes of the full blocks of tokens, each chained to the one before: [h_0, h_1, ...]."""
    hashes, parent = [], None
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start:start + block_size])))
        hashes.append(parent)
    return hashes


class OutOfBlocks(RuntimeError):
    """No free block is left (the scheduler then preempts a sequence)."""


class BlockManager:
    """A pool of num_blocks blocks of block_size positions: allocation, reference counts, prefix cache."""

    def __init__(self, num_blocks, block_size):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockManager: num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        self.hash_of = [None] * num_blocks            # the prefix hash a full block holds, or None
        self.cached = {}                              # prefix hash -> block
        self.plain = OrderedDict((b, None) for b in range(num_blocks))    # ref 0, no cached prefix
        self.evictable = OrderedDict()                # ref 0 with a cached prefix, least recently freed first
        self.prefix_hits = 0                          # blocks taken from the prefix cache, ever

    @property
    def num_free(self):
        return len(self.plain) + len(self.evictable)

    @property
    def num_used(self):
        return self.num_blocks - self.num_free

    def allocate(self):
        """A block for one sequence (ref 1): a never-cached free block first, else the oldest cached one."""
        if self.plain:
            block, _ = self.plain.popitem(last=False)
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
        else:
            raise OutOfBlocks("BlockManager: all blocks are in use")
        if self.hash_of[block] is not None:           # its old prefix is overwritten: forget it
            del self.cached[self.hash_of[block]]
            self.hash_of[block] = None
        self.refs[block] = 1
        return block

    def take_cached(self, hashes):
        """The cached blocks of the longest run of hashes from the first, each with ref += 1."""
        taken = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.evictable[block]
            self.refs[block] += 1
            taken.append(block)
        self.prefix_hits += len(taken)
        return taken

    def register(self, block, h):
        """block is full and holds the prefix whose chained hash is h: later sequences may share it."""
        if self.hash_of[block] is not None or h in self.cached:
            return                                    # already known (or an equal block is cached)
        self.hash_of[block] = h
        self.cached[h] = block

    def release(self, blocks):
        """A sequence is done with its blocks (ref -= 1); blocks nobody holds return to the free list."""
        for block in blocks:
            if self.refs[block] <= 0:
                raise RuntimeError(f"BlockManager: block {block} released more often than it was taken")
            self.refs[block] -= 1
            if self.refs[block] == 0:
                (self.plain if self.hash_of[block] is None else self.evictable)[block] = None
