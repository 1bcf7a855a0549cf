"""Process trees from /proc, shared by the test harness (eptest.py) and the benchmark."""

import os


def proc_children(pid):
    """The direct children of pid (every thread's), or [] when it is gone."""
    kids = []
    try:
        tasks = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def descendants(pid):
    """Every descendant of pid, parents before their children."""
    out, todo = [], [pid]
    while todo:
        for c in proc_children(todo.pop()):
            if c not in out:
                out.append(c)
                todo.append(c)
    return out
