"""The cohort tree of quota: nominal quota, borrowing and lending limits at every edge, and usage.

Kueue's resource-node model (pkg/cache/resource_node.go): every node (ClusterQueue or Cohort) has a *subtree
quota*: its own nominal quota plus what its children lend to it. A child with a lendingLimit keeps
`subtree - lendingLimit` to itself (its *guaranteed* quota) and lends the rest. A node's usage as seen by its
parent is what it uses beyond its guaranteed quota. What a ClusterQueue can still take is its unused
guaranteed quota plus what its parent can give, capped by its borrowingLimit; recursively up to the root.

The machine's real capacity is a further hard limit (by resource name, whatever the flavor): Kaip runs
workloads on this machine, so nothing is admitted that the machine cannot hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from kaip.scheduling.model import FR, ClusterQueue, Cohort, Quota


class Node:
    __slots__ = ("name", "is_queue", "parent", "children", "quota", "subtree", "usage")

    def __init__(self, name: str, is_queue: bool, quota: dict[FR, Quota]) -> None:
        self.name = name
        self.is_queue = is_queue
        self.parent: Node | None = None
        self.children: list[Node] = []
        self.quota = quota
        self.subtree: dict[FR, int] = {}
        self.usage: dict[FR, int] = {}

    def guaranteed(self, fr: FR) -> int:
        """Quota this node keeps from its parent: all of it unless a lendingLimit says otherwise."""
        q = self.quota.get(fr)
        if q is None or q.lending_limit is None or self.parent is None:
            return 0
        return max(0, self.subtree.get(fr, 0) - q.lending_limit)

    def borrowing_limit(self, fr: FR) -> int | None:
        q = self.quota.get(fr)
        return None if q is None else q.borrowing_limit


class QuotaTree:
    def __init__(self, queues: Iterable[ClusterQueue], cohorts: Iterable[Cohort] = (),
                 capacity: dict[str, int] | None = None) -> None:
        self.queues: dict[str, Node] = {}
        self.cohorts: dict[str, Node] = {}
        self.capacity = dict(capacity or {})
        self.node_usage: dict[str, int] = {}
        self.cyclic: set[str] = set()
        specs = {c.name: c for c in cohorts}
        for c in specs.values():
            self.cohorts[c.name] = Node(c.name, False, c.quotas())
        for cq in queues:
            node = Node(cq.name, True, cq.quotas())
            self.queues[cq.name] = node
            if cq.cohort:
                node.parent = self._cohort(cq.cohort)
                node.parent.children.append(node)
        for c in specs.values():
            if c.parent:
                child, parent = self.cohorts[c.name], self._cohort(c.parent)
                child.parent = parent
                parent.children.append(child)
        self._break_cycles()
        self._roots: dict[str, str] = {}
        self.versions: dict[str, int] = {}  # per cohort tree: bumped on every usage change
        for root in [n for n in self.cohorts.values() if n.parent is None]:
            self._compute_subtree(root)
        for node in self.queues.values():
            if node.parent is None:
                node.subtree = {fr: q.nominal for fr, q in node.quota.items()}

    def _cohort(self, name: str) -> Node:
        if name not in self.cohorts:  # a cohort named by a ClusterQueue need not exist as an object
            self.cohorts[name] = Node(name, False, {})
        return self.cohorts[name]

    def _break_cycles(self) -> None:
        """A cycle of cohorts disables every member, as in Kueue: detach them so that nothing loops."""
        for start in list(self.cohorts.values()):
            seen: list[Node] = []
            node: Node | None = start
            while node is not None and node not in seen:
                seen.append(node)
                node = node.parent
            if node is not None:  # came back to a node already on the path: a cycle
                cycle = seen[seen.index(node):]
                for member in cycle:
                    self.cyclic.add(member.name)
                for member in cycle:
                    if member.parent is not None:
                        member.parent.children.remove(member)
                    member.parent = None

    def _compute_subtree(self, node: Node) -> None:
        subtree = {fr: q.nominal for fr, q in node.quota.items()}
        for child in node.children:
            if child.is_queue:
                child.subtree = {fr: q.nominal for fr, q in child.quota.items()}
            else:
                self._compute_subtree(child)
            for fr, amount in child.subtree.items():
                subtree[fr] = subtree.get(fr, 0) + amount - child.guaranteed(fr)
        node.subtree = subtree

    # ---- queries ------------------------------------------------------------------------------------

    def root_name(self, cq: str) -> str:
        root = self._roots.get(cq)
        if root is None:
            root = self._roots[cq] = self._root_name(cq)
        return root

    def _root_name(self, cq: str) -> str:
        node = self.queues[cq]
        while node.parent is not None:
            node = node.parent
        return node.name if node is not self.queues[cq] else f"cq:{cq}"

    def in_cyclic_cohort(self, cq: str) -> bool:
        node = self.queues[cq].parent
        while node is not None:
            if node.name in self.cyclic:
                return True
            node = node.parent
        return False

    def nominal(self, cq: str, fr: FR) -> int:
        return self.queues[cq].subtree.get(fr, 0)

    def usage(self, cq: str, fr: FR) -> int:
        return self.queues[cq].usage.get(fr, 0)

    def borrowing(self, cq: str, frs: Iterable[FR] | None = None) -> bool:
        node = self.queues[cq]
        keys = node.usage.keys() if frs is None else frs
        return any(node.usage.get(fr, 0) > node.subtree.get(fr, 0) for fr in keys)

    def available(self, cq: str, fr: FR) -> int:
        return self._available(self.queues[cq], fr)

    def _available(self, node: Node, fr: FR) -> int:
        if node.parent is None:
            return node.subtree.get(fr, 0) - node.usage.get(fr, 0)
        guaranteed = node.guaranteed(fr)
        used = node.usage.get(fr, 0)
        local = max(0, guaranteed - used)
        parent = self._available(node.parent, fr)
        limit = node.borrowing_limit(fr)
        if limit is not None:
            stored_in_parent = node.subtree.get(fr, 0) - guaranteed
            used_in_parent = max(0, used - guaranteed)
            parent = min(stored_in_parent - used_in_parent + limit, parent)
        return local + max(0, parent)

    def potential_available(self, cq: str, fr: FR) -> int:
        """What the ClusterQueue could have with every other workload gone: the ceiling for preemption."""
        return self._potential(self.queues[cq], fr)

    def _potential(self, node: Node, fr: FR) -> int:
        if node.parent is None:
            return node.subtree.get(fr, 0)
        guaranteed = node.guaranteed(fr)
        parent = self._potential(node.parent, fr)
        limit = node.borrowing_limit(fr)
        if limit is not None:
            parent = min(node.subtree.get(fr, 0) - guaranteed + limit, parent)
        return guaranteed + parent

    def node_fits(self, usage: dict[FR, int]) -> bool:
        """The machine's capacity, by resource name over all flavors."""
        need: dict[str, int] = {}
        for (_flavor, resource), amount in usage.items():
            need[resource] = need.get(resource, 0) + amount
        return all(self.node_usage.get(r, 0) + q <= self.capacity[r] for r, q in need.items() if r in self.capacity)

    def node_short(self, resource: str, amount: int) -> bool:
        return resource in self.capacity and self.node_usage.get(resource, 0) + amount > self.capacity[resource]

    def beyond_node(self, resource: str, amount: int) -> bool:
        return resource in self.capacity and amount > self.capacity[resource]

    # ---- updates ------------------------------------------------------------------------------------

    def add(self, cq: str, usage: dict[FR, int], sign: int = 1) -> None:
        """Add (sign=1) or remove (sign=-1) a workload's usage, keeping every ancestor's usage consistent."""
        root = self.root_name(cq)
        self.versions[root] = self.versions.get(root, 0) + 1
        for (_flavor, resource), amount in usage.items():
            self.node_usage[resource] = self.node_usage.get(resource, 0) + sign * amount
        node: Node | None = self.queues[cq]
        deltas = {fr: sign * amount for fr, amount in usage.items()}
        while node is not None and deltas:
            parent = node.parent
            next_deltas: dict[FR, int] = {}
            for fr, delta in deltas.items():
                before = node.usage.get(fr, 0)
                after = before + delta
                node.usage[fr] = after
                if parent is not None:
                    g = node.guaranteed(fr)
                    change = max(0, after - g) - max(0, before - g)
                    if change:
                        next_deltas[fr] = change
            node, deltas = parent, next_deltas

    # ---- fair sharing -------------------------------------------------------------------------------

    def path_deltas(self, cq: str, usage: dict[FR, int]) -> dict[str, dict[FR, int]]:
        """How adding `usage` to a ClusterQueue would change each node's usage up the tree (no mutation)."""
        out: dict[str, dict[FR, int]] = {}
        node: Node | None = self.queues[cq]
        deltas = dict(usage)
        while node is not None and deltas:
            out[node.name] = deltas
            parent = node.parent
            next_deltas: dict[FR, int] = {}
            if parent is not None:
                for fr, delta in deltas.items():
                    before = node.usage.get(fr, 0)
                    g = node.guaranteed(fr)
                    change = max(0, before + delta - g) - max(0, before - g)
                    if change:
                        next_deltas[fr] = change
            node, deltas = parent, next_deltas
        return out

    def lendable(self, node: Node) -> dict[str, int]:
        """What a node's subtree can lend, by resource name over all flavors (Kueue's calculateLendable)."""
        out: dict[str, int] = {}
        for (_flavor, resource), amount in node.subtree.items():
            out[resource] = out.get(resource, 0) + amount
        return out

    def share(self, node: Node, weight: float, extra: dict[FR, int] | None = None) -> float:
        """Dominant resource share (Kueue's DRS, pkg/cache/scheduler/fair_sharing.go): the largest ratio, over
        resources, of what the node borrows beyond its subtree quota to what its parent can lend, ×1000, divided
        by the fair-sharing weight. 0 when not borrowing (or at the root); infinite when borrowing with weight 0."""
        if node.parent is None:
            return 0.0
        extra = extra or {}
        borrowed: dict[str, int] = {}
        for fr in set(node.usage) | set(extra):
            over = node.usage.get(fr, 0) + extra.get(fr, 0) - node.subtree.get(fr, 0)
            if over > 0:
                borrowed[fr[1]] = borrowed.get(fr[1], 0) + over
        if not borrowed:
            return 0.0
        lendable = self.lendable(node.parent)
        drs = max((b * 1000 // lendable[r] for r, b in borrowed.items() if lendable.get(r, 0) > 0), default=0)
        if weight <= 0:
            return float("inf")
        return drs / weight
