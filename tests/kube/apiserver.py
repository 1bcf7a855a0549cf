#!/usr/bin/python3
"""A stand-in for the kube-apiserver, for etcdproxy's tests (Python 3 standard library and
python3-yaml; run it with /usr/bin/python3).

    apiserver.py --listen 127.0.0.1:PORT --kubeconfig-out FILE [--crd FILE]... [--tls DIR]
                 [--tokens FILE] [--log FILE] [--bookmark-interval SECONDS]

It writes a kubeconfig to FILE, then prints "ready" on stdout once it serves.

What it serves, with the semantics of the real server as far as kubectl and client libraries
can tell: discovery (/version, /api, /api/v1, /apis, /apis/G, /apis/G/V, /openapi/v2 and v3),
namespaces, secrets, configmaps and events (core v1), leases (coordination.k8s.io/v1),
customresourcedefinitions (apiextensions.k8s.io/v1) and every custom resource of the CRDs in
the store: those of --crd (default contrib/crd/etcdstorage-crd.yaml of this repository; an
empty --crd '' loads none) and any created later. One global resourceVersion; list with
label/field selectors, limit/continue, resourceVersion and resourceVersionMatch; watch with
bookmarks; Table output; merge, JSON and strategic merge patches; the CRD's schema validated
and pruned; status only through /status; finalizers; 409/410/404/422 as the real server
answers them, every error a Status.

Authentication: without --tls and --tokens, none. --tokens FILE: the bearer tokens accepted
are the lines of FILE, read again on every request. --tls DIR: HTTPS with a CA, a serving
certificate for 127.0.0.1 and a client certificate (CN etcdproxy-node, O etcdproxy:nodes)
made with openssl in DIR (kept when they exist already); a verified client certificate or a
listed token authenticates. Anything else gets 401.

Test hooks, under /_test/ (no authentication, not in the request log; bodies JSON):
    POST /_test/compact                   the compaction floor becomes the current
                                          resourceVersion -> {"floor": N}: new watches and
                                          lists from below it get 410; open watches go on
    POST /_test/fault {"method": "PATCH", "path": REGEX, "query": REGEX, "code": 503,
                       "count": 1, "retry_after": 2, "reason": ..., "message": ...}
                                          the next COUNT requests whose method (default any)
                                          and path (re.search; query likewise) match get CODE
                                          as a Status (Retry-After when given); with
                                          "hold": SECONDS instead, they are carried out
                                          and their answer is sent that much later (a
                                          write committed whose answer is late)
    GET  /_test/fault, POST /_test/fault/clear          the pending faults; drop them
    POST /_test/watch-fault {"kind": "split"|"close", "count": 1, "path": REGEX,
                             "bookmarks": false}
                                          split: the next watch event goes out in two chunks
                                          cut in the middle of its JSON, 0.2 s apart; close:
                                          the next watch connection is closed in the middle of
                                          an event; BOOKMARKs count only with "bookmarks": true
    POST /_test/end-watches               every open watch ends normally -> {"ended": N}
    POST /_test/bookmark                  a BOOKMARK now on every watch that allowed them
    GET  /_test/requests                  [{"method", "path", "query", "code", "time",
                                            "user", "content_type", "agent",
                                            "body" (its first 8 KiB)}, ...]
    POST /_test/requests/clear
    GET  /_test/state                     {"resourceVersion", "floor", "watches"}
"""

import argparse
import base64
import bisect
import copy
import datetime
import http.server
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CRD = os.path.join(HERE, '..', '..', 'contrib', 'crd', 'etcdstorage-crd.yaml')
SERVER_VERSION = {'major': '1', 'minor': '20', 'gitVersion': 'v1.20.2',
                  'gitCommit': 'etcdproxy-test-standin', 'gitTreeState': 'clean',
                  'buildDate': '2021-01-13T13:20:00Z', 'goVersion': 'go1.15.5',
                  'compiler': 'gc', 'platform': 'linux/amd64'}
VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']

OPTS = None  # the command line


# ---- small helpers ---------------------------------------------------------------------------

def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def parse_rfc3339(s):
    try:
        return datetime.datetime.fromisoformat(s.replace('Z', '+00:00')).timestamp()
    except (ValueError, AttributeError):
        return None


def human_duration(d):
    """apimachinery's duration.HumanDuration."""
    seconds = int(d)
    if seconds < -1:
        return '<invalid>'
    if seconds < 0:
        return '0s'
    if seconds < 120:
        return '%ds' % seconds
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return '%dm' % minutes if s == 0 else '%dm%ds' % (minutes, s)
    if minutes < 180:
        return '%dm' % minutes
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return '%dh' % hours if m == 0 else '%dh%dm' % (hours, m)
    if hours < 48:
        return '%dh' % hours
    if hours < 24 * 8:
        h = hours % 24
        return '%dd' % (hours // 24) if h == 0 else '%dd%dh' % (hours // 24, h)
    if hours < 24 * 365 * 2:
        return '%dd' % (hours // 24)
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return '%dy' % (hours // 24 // 365) if dy == 0 else '%dy%dd' % (hours // 24 // 365, dy)
    return '%dy' % (hours // 24 // 365)


def age_cell(obj):
    t = parse_rfc3339(obj.get('metadata', {}).get('creationTimestamp') or '')
    return '<unknown>' if t is None else human_duration(time.time() - t)


DNS1123_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
DNS1123_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
QUALIFIED_NAME = re.compile(r'^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$')
LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')
CONFIG_KEY = re.compile(r'^[-._a-zA-Z0-9]+$')
RFC3339 = re.compile(r'^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$')
MICROTIME = re.compile(r'^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$')


def json_type_name(v):
    if v is None:
        return 'null'
    if isinstance(v, bool):
        return 'boolean'
    if isinstance(v, int):
        return 'integer'
    if isinstance(v, float):
        return 'number'
    if isinstance(v, str):
        return 'string'
    if isinstance(v, list):
        return 'array'
    return 'object'


def quote(v):
    return json.dumps(v) if isinstance(v, str) else json.dumps(json.dumps(v))


# ---- errors ----------------------------------------------------------------------------------

REASONS = {400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound',
           405: 'MethodNotAllowed', 406: 'NotAcceptable', 409: 'Conflict', 410: 'Expired',
           415: 'UnsupportedMediaType', 422: 'Invalid', 429: 'TooManyRequests',
           500: 'InternalError', 503: 'ServiceUnavailable', 504: 'Timeout'}


class ApiError(Exception):
    def __init__(self, code, message, reason=None, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASONS.get(code, '')
        self.details = details
        self.headers = headers or {}

    def status(self):
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code, reason, message, details=None):
    st = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
          'message': message, 'reason': reason, 'code': code}
    if details:
        st['details'] = details
    return st


def not_found(res, name):
    return ApiError(404, '%s "%s" not found' % (res.qualified, name),
                    details={'name': name, 'group': res.group, 'kind': res.plural})


def already_exists(res, name):
    return ApiError(409, '%s "%s" already exists' % (res.qualified, name), 'AlreadyExists',
                    details={'name': name, 'group': res.group, 'kind': res.plural})


def conflict(res, name):
    return ApiError(409, 'Operation cannot be fulfilled on %s "%s": the object has been '
                    'modified; please apply your changes to the latest version and try again'
                    % (res.qualified, name), 'Conflict',
                    details={'name': name, 'group': res.group, 'kind': res.plural})


def invalid(res, name, causes):
    """causes: [(field, text)] where text follows "field: "."""
    msgs = ['%s: %s' % c for c in causes]
    msg = msgs[0] if len(msgs) == 1 else '[%s]' % ', '.join(msgs)
    kind = res.kind + ('.' + res.group if res.group else '')
    return ApiError(422, '%s "%s" is invalid: %s' % (kind, name, msg), 'Invalid', details={
        'name': name, 'group': res.group, 'kind': res.kind,
        'causes': [{'reason': 'FieldValueInvalid', 'message': t, 'field': f}
                   for f, t in causes]})


def bad_request(message):
    return ApiError(400, message, 'BadRequest')


# ---- resources -------------------------------------------------------------------------------

class Resource:
    def __init__(self, group, version, plural, kind, namespaced, singular=None, short=(),
                 status=False, custom=False, schema=None, columns=None, categories=(),
                 list_kind=None, crd=None):
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.namespaced = namespaced
        self.singular = singular or kind.lower()
        self.short = list(short)
        self.status = status
        self.custom = custom
        self.schema = schema
        self.columns = columns
        self.categories = list(categories)
        self.list_kind = list_kind or kind + 'List'
        self.crd = crd  # the name of the CRD that defines it

    @property
    def gv(self):
        return '%s/%s' % (self.group, self.version) if self.group else self.version

    @property
    def gk(self):
        return (self.group, self.plural)

    @property
    def qualified(self):
        return '%s.%s' % (self.plural, self.group) if self.group else self.plural

    def discovery(self):
        out = [{'name': self.plural, 'singularName': self.singular,
                'namespaced': self.namespaced, 'kind': self.kind, 'verbs': VERBS}]
        if self.short:
            out[0]['shortNames'] = self.short
        if self.categories:
            out[0]['categories'] = self.categories
        if self.status:
            out.append({'name': self.plural + '/status', 'singularName': '',
                        'namespaced': self.namespaced, 'kind': self.kind,
                        'verbs': ['get', 'patch', 'update']})
        return out


BUILTINS = [
    Resource('', 'v1', 'namespaces', 'Namespace', False, short=['ns'], status=True),
    Resource('', 'v1', 'secrets', 'Secret', True),
    Resource('', 'v1', 'configmaps', 'ConfigMap', True, short=['cm']),
    Resource('', 'v1', 'events', 'Event', True, short=['ev']),
    Resource('coordination.k8s.io', 'v1', 'leases', 'Lease', True),
    Resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions',
             'CustomResourceDefinition', False, short=['crd', 'crds'], status=True,
             categories=['api-extensions']),
]


def resources_of_crd(crd):
    spec = crd.get('spec') or {}
    names = spec.get('names') or {}
    out = []
    for v in spec.get('versions') or []:
        if not v.get('served', True):
            continue
        out.append(Resource(
            spec['group'], v['name'], names['plural'], names['kind'],
            spec.get('scope', 'Namespaced') == 'Namespaced', singular=names.get('singular'),
            short=names.get('shortNames') or (), status='status' in (v.get('subresources') or {}),
            custom=True, schema=(v.get('schema') or {}).get('openAPIV3Schema'),
            columns=v.get('additionalPrinterColumns') or [], categories=names.get('categories')
            or (), list_kind=names.get('listKind'), crd=crd['metadata']['name']))
    return out


# ---- selectors -------------------------------------------------------------------------------

def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(s):
    """[(op, key, values)]: op in = != in notin exists !exists."""
    reqs = []
    for p in split_top(s or ''):
        m = re.match(r'^([^\s!=]+)\s+(in|notin)\s+\((.*)\)$', p)
        if m:
            reqs.append((m.group(2), m.group(1), {v.strip() for v in m.group(3).split(',')
                                                  if v.strip()}))
            continue
        m = re.match(r'^([^\s!=]+)\s*(==|!=|=)\s*([^\s]*)$', p)
        if m:
            reqs.append(('!=' if m.group(2) == '!=' else '=', m.group(1), {m.group(3)}))
            continue
        m = re.match(r'^(!?)\s*([^\s!=()]+)$', p)
        if m:
            reqs.append(('!exists' if m.group(1) else 'exists', m.group(2), set()))
            continue
        raise bad_request('unable to parse requirement: invalid label selector "%s"' % s)
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for op, k, vals in reqs:
        has = k in labels
        if op == '=' and not (has and labels[k] in vals):
            return False
        if op == '!=' and has and labels[k] in vals:
            return False
        if op == 'in' and not (has and labels[k] in vals):
            return False
        if op == 'notin' and has and labels[k] in vals:
            return False
        if op == 'exists' and not has:
            return False
        if op == '!exists' and has:
            return False
    return True


FIELD_PATHS = {'metadata.name': lambda o: o['metadata'].get('name', ''),
               'metadata.namespace': lambda o: o['metadata'].get('namespace', '')}


def parse_field_selector(s, res):
    reqs = []
    for p in split_top(s or ''):
        m = re.match(r'^([^\s!=]+)\s*(==|!=|=)\s*(.*)$', p)
        if not m:
            raise bad_request('invalid selector: \'%s\'; can\'t understand \'%s\'' % (s, p))
        field = m.group(1)
        if field not in FIELD_PATHS and not (res.plural == 'secrets' and field == 'type') and \
                not (res.plural == 'events' and field.startswith('involvedObject.')):
            raise bad_request('"%s" is not a known field selector: only "metadata.name", '
                              '"metadata.namespace"' % field)
        reqs.append((field, m.group(2) != '!=', m.group(3)))
    return reqs


def field_value(obj, field):
    if field in FIELD_PATHS:
        return FIELD_PATHS[field](obj)
    cur = obj
    for part in field.split('.'):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return '' if cur is None else str(cur)


def fields_match(reqs, obj):
    return all((field_value(obj, f) == v) == eq for f, eq, v in reqs)


# ---- JSONPath (the subset printer columns use) ------------------------------------------------

def jsonpath(expr, obj):
    """Results of a simple JSONPath: .a.b, [n], [*], ['x'], [?(@.a=="v")]."""
    expr = expr.strip()
    if expr.startswith('{') and expr.endswith('}'):
        expr = expr[1:-1]
    if expr.startswith('$'):
        expr = expr[1:]
    tokens = re.findall(r'\.\.?[^.\[]+|\[[^\]]*\]', expr)
    cur = [obj]
    for tok in tokens:
        nxt = []
        if tok.startswith('.'):
            name = tok[1:]
            for c in cur:
                if name == '*':
                    nxt.extend(c.values() if isinstance(c, dict) else c if isinstance(c, list)
                               else [])
                elif isinstance(c, dict) and name in c:
                    nxt.append(c[name])
        else:
            inner = tok[1:-1].strip()
            m = re.match(r'^\?\(@((?:\.[^.=!]+)+)\s*(==|!=)\s*(["\'])(.*)\3\)$', inner)
            if m:
                path, op, want = m.group(1), m.group(2), m.group(4)
                for c in cur:
                    for item in c if isinstance(c, list) else []:
                        got = jsonpath(path, item)
                        ok = bool(got) and str(got[0]) == want
                        if (op == '==') == ok:
                            nxt.append(item)
            elif inner == '*':
                for c in cur:
                    nxt.extend(c if isinstance(c, list) else c.values() if isinstance(c, dict)
                               else [])
            elif re.match(r'^-?\d+$', inner):
                i = int(inner)
                for c in cur:
                    if isinstance(c, list) and -len(c) <= i < len(c):
                        nxt.append(c[i])
            else:
                name = inner.strip('\'"')
                for c in cur:
                    if isinstance(c, dict) and name in c:
                        nxt.append(c[name])
        cur = nxt
    return cur


# ---- patches ---------------------------------------------------------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge_patch(target, patch):
    """For the built-in kinds served here (maps of strings, no merge-keyed lists that
    matter): a merge patch that understands the $patch directives and drops the others."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get('$patch')
    if directive == 'delete':
        return None
    rest = {k: v for k, v in patch.items() if not k.startswith('$')}
    if directive == 'replace':
        return copy.deepcopy(rest)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in rest.items():
        if v is None:
            result.pop(k, None)
        else:
            merged = strategic_merge_patch(result.get(k), v)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
    return result


def pointer_parts(ptr):
    if ptr == '':
        return []
    if not ptr.startswith('/'):
        raise ApiError(422, 'invalid JSON pointer "%s"' % ptr, 'Invalid')
    return [p.replace('~1', '/').replace('~0', '~') for p in ptr[1:].split('/')]


def json_patch(doc, ops):
    if not isinstance(ops, list):
        raise bad_request('json: cannot unmarshal object into Go value of type jsonpatch.Patch')
    doc = copy.deepcopy(doc)

    def container(parts):
        cur = doc
        for p in parts[:-1]:
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
            elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
                cur = cur[int(p)]
            else:
                raise ApiError(422, 'doc is missing path: "/%s": missing value' % '/'.join(parts),
                               'Invalid')
        return cur

    def get(parts):
        if not parts:
            return doc
        c = container(parts)
        k = parts[-1]
        if isinstance(c, dict) and k in c:
            return c[k]
        if isinstance(c, list) and k.isdigit() and int(k) < len(c):
            return c[int(k)]
        raise ApiError(422, 'doc is missing path: "/%s": missing value' % '/'.join(parts),
                       'Invalid')

    def remove(parts):
        c = container(parts)
        k = parts[-1]
        if isinstance(c, dict) and k in c:
            return c.pop(k)
        if isinstance(c, list) and k.isdigit() and int(k) < len(c):
            return c.pop(int(k))
        raise ApiError(422, 'Unable to remove nonexistent key: %s: missing value' % k, 'Invalid')

    def add(parts, value, replace=False):
        nonlocal doc
        if not parts:
            doc = value
            return
        c = container(parts)
        k = parts[-1]
        if isinstance(c, dict):
            if replace and k not in c:
                raise ApiError(422, 'replace operation does not apply: doc is missing key: /%s: '
                               'missing value' % '/'.join(parts), 'Invalid')
            c[k] = value
        elif isinstance(c, list):
            if k == '-' and not replace:
                c.append(value)
            elif k.isdigit() and int(k) <= len(c) - (1 if replace else 0):
                if replace:
                    c[int(k)] = value
                else:
                    c.insert(int(k), value)
            else:
                raise ApiError(422, 'Unable to access invalid index: %s: invalid index referenced'
                               % k, 'Invalid')
        else:
            raise ApiError(422, 'doc is missing path: "/%s": missing value' % '/'.join(parts),
                           'Invalid')

    for op in ops:
        if not isinstance(op, dict) or 'op' not in op:
            raise bad_request('Unexpected kind: unknown')
        kind, path = op['op'], pointer_parts(op.get('path', ''))
        if kind == 'add':
            add(path, copy.deepcopy(op.get('value')))
        elif kind == 'remove':
            remove(path)
        elif kind == 'replace':
            add(path, copy.deepcopy(op.get('value')), replace=True)
        elif kind == 'move':
            v = remove(pointer_parts(op.get('from', '')))
            add(path, v)
        elif kind == 'copy':
            add(path, copy.deepcopy(get(pointer_parts(op.get('from', '')))))
        elif kind == 'test':
            if get(path) != op.get('value'):
                raise ApiError(422, 'testing value %s failed: test failed' % op.get('path'),
                               'Invalid')
        else:
            raise bad_request('Unexpected kind: %s' % kind)
    return doc


# ---- validation ------------------------------------------------------------------------------

def check_schema(schema, value, path, errs):
    """Validate value against a structural schema; returns it pruned of unknown fields."""
    if schema is None:
        return value
    t = schema.get('type')
    if value is None:
        if schema.get('nullable'):
            return None
        if t:
            errs.append((path, 'Invalid value: "null": %s in body must be of type %s: "null"'
                         % (path, t)))
        return value
    if schema.get('x-kubernetes-int-or-string'):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errs.append((path, 'Invalid value: %s: must be an integer or a string' % quote(value)))
        return value
    got = json_type_name(value)
    ok = (t is None or got == t or (t == 'number' and got == 'integer'))
    if not ok:
        errs.append((path, 'Invalid value: "%s": %s in body must be of type %s: "%s"'
                     % (got, path, t, got)))
        return value
    if 'enum' in schema and value not in schema['enum']:
        errs.append((path, 'Unsupported value: %s: supported values: %s' % (
            quote(value), ', '.join(quote(e) for e in schema['enum']))))
    if isinstance(value, str):
        if 'maxLength' in schema and len(value) > schema['maxLength']:
            errs.append((path, 'Too long: may not be longer than %d' % schema['maxLength']))
        if 'minLength' in schema and len(value) < schema['minLength']:
            errs.append((path, 'Invalid value: %s: %s in body should be at least %d chars long'
                         % (quote(value), path, schema['minLength'])))
        if 'pattern' in schema and not re.search(schema['pattern'], value):
            errs.append((path, 'Invalid value: %s: %s in body should match \'%s\''
                         % (quote(value), path, schema['pattern'])))
        if schema.get('format') == 'date-time' and not RFC3339.match(value):
            errs.append((path, 'Invalid value: %s: %s in body must be of type date-time: %s'
                         % (quote(value), path, quote(value))))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 'minimum' in schema and value < schema['minimum']:
            errs.append((path, 'Invalid value: %s: %s in body should be greater than or equal '
                         'to %s' % (value, path, schema['minimum'])))
        if 'maximum' in schema and value > schema['maximum']:
            errs.append((path, 'Invalid value: %s: %s in body should be less than or equal to %s'
                         % (value, path, schema['maximum'])))
    if isinstance(value, dict):
        props = schema.get('properties') or {}
        addl = schema.get('additionalProperties')
        keep = schema.get('x-kubernetes-preserve-unknown-fields')
        out = {}
        for k, v in value.items():
            sub = '%s.%s' % (path, k) if path else k
            if k in props:
                out[k] = check_schema(props[k], v, sub, errs)
            elif isinstance(addl, dict):
                out[k] = check_schema(addl, v, sub, errs)
            elif addl is True or keep:
                out[k] = v
        for k in schema.get('required') or []:
            if k not in value:
                errs.append(('%s.%s' % (path, k) if path else k, 'Required value'))
        return out
    if isinstance(value, list):
        items = schema.get('items')
        out = [check_schema(items, v, '%s[%d]' % (path, i), errs) for i, v in enumerate(value)]
        lt = schema.get('x-kubernetes-list-type')
        if lt == 'map':
            keys = schema.get('x-kubernetes-list-map-keys') or []
            seen = set()
            for i, v in enumerate(out):
                if not isinstance(v, dict):
                    continue
                k = tuple(json.dumps(v.get(key)) for key in keys)
                if k in seen:
                    errs.append(('%s[%d]' % (path, i), 'Duplicate value: %s' % json.dumps(
                        {key: v.get(key) for key in keys})))
                seen.add(k)
        elif lt == 'set':
            seen = set()
            for i, v in enumerate(out):
                k = json.dumps(v, sort_keys=True)
                if k in seen:
                    errs.append(('%s[%d]' % (path, i), 'Duplicate value: %s' % k))
                seen.add(k)
        return out
    return value


def check_meta_types(res, obj):
    """What the real server's decoder refuses with 400 before any validation."""
    meta = obj.get('metadata')
    what = '%s in version "%s" cannot be handled as a %s' % (res.kind, res.version, res.kind)
    if meta is None:
        obj['metadata'] = meta = {}
    if not isinstance(meta, dict):
        raise bad_request('%s: metadata must be an object' % what)
    for k in ('name', 'generateName', 'namespace', 'resourceVersion', 'uid',
              'creationTimestamp', 'deletionTimestamp'):
        if k in meta and meta[k] is not None and not isinstance(meta[k], str):
            raise bad_request('%s: json: cannot unmarshal %s into Go struct field '
                              'ObjectMeta.metadata.%s of type string'
                              % (what, json_type_name(meta[k]), k))
    for k in ('labels', 'annotations'):
        v = meta.get(k)
        if v is None:
            continue
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise bad_request('%s: json: cannot unmarshal %s into Go struct field '
                              'ObjectMeta.metadata.%s of type string'
                              % (what, 'object' if isinstance(v, dict) else json_type_name(v), k))
    for k in ('finalizers',):
        v = meta.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise bad_request('%s: json: cannot unmarshal into Go struct field '
                              'ObjectMeta.metadata.finalizers of type []string' % what)
    for k in ('creationTimestamp', 'deletionTimestamp'):
        v = meta.get(k)
        if isinstance(v, str) and not RFC3339.match(v):
            raise bad_request('%s: parsing time "%s" as "2006-01-02T15:04:05Z07:00": cannot '
                              'parse' % (what, v))


def check_qualified_key(key, path, errs, what):
    prefix, _, name = key.rpartition('/')
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.append((path, 'Invalid value: %s: prefix part a lowercase RFC 1123 subdomain must '
                     'consist of lower case alphanumeric characters, \'-\' or \'.\', and must '
                     'start and end with an alphanumeric character' % quote(key)))
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errs.append((path, 'Invalid value: %s: name part must consist of alphanumeric '
                     'characters, \'-\', \'_\' or \'.\', and must start and end with an '
                     'alphanumeric character (e.g. \'MyName\',  or \'my.name\',  or '
                     '\'123-abc\', regex used for validation is '
                     '\'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\')' % quote(key)))


def validate_meta(res, obj, errs):
    meta = obj['metadata']
    name = meta.get('name', '')
    if res.plural == 'namespaces':
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            errs.append(('metadata.name', 'Invalid value: %s: a lowercase RFC 1123 label must '
                         'consist of lower case alphanumeric characters or \'-\', and must '
                         'start and end with an alphanumeric character (e.g. \'my-name\',  or '
                         '\'123-abc\', regex used for validation is '
                         '\'[a-z0-9]([-a-z0-9]*[a-z0-9])?\')' % quote(name)))
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append(('metadata.name', 'Invalid value: %s: a lowercase RFC 1123 subdomain must '
                     'consist of lower case alphanumeric characters, \'-\' or \'.\', and must '
                     'start and end with an alphanumeric character (e.g. \'example.com\', '
                     'regex used for validation is \'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]'
                     '([-a-z0-9]*[a-z0-9])?)*\')' % quote(name)))
    for k, v in (meta.get('labels') or {}).items():
        check_qualified_key(k, 'metadata.labels', errs, 'label')
        if len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append(('metadata.labels', 'Invalid value: %s: a valid label must be an empty '
                         'string or consist of alphanumeric characters, \'-\', \'_\' or \'.\', '
                         'and must start and end with an alphanumeric character' % quote(v)))
    ann = meta.get('annotations') or {}
    for k in ann:
        check_qualified_key(k, 'metadata.annotations', errs, 'annotation')
    if sum(len(k) + len(v) for k, v in ann.items()) > 262144:
        errs.append(('metadata.annotations', 'Too long: must have at most 262144 bytes'))
    for i, ref in enumerate(meta.get('ownerReferences') or []):
        for f in ('apiVersion', 'kind', 'name', 'uid'):
            if not isinstance(ref, dict) or not ref.get(f):
                errs.append(('metadata.ownerReferences[%d].%s' % (i, f) if f != 'uid' else
                             'metadata.ownerReferences.uid', 'Invalid value: "": %s must not '
                             'be empty' % f))


def check_base64_map(what, field, m, errs):
    out = {}
    if m is None:
        return None
    if not isinstance(m, dict):
        raise bad_request('%s: %s must be an object' % (what, field))
    for k, v in m.items():
        if not isinstance(v, str):
            raise bad_request('%s: json: cannot unmarshal %s into Go struct field %s of type '
                              '[]uint8' % (what, json_type_name(v), field))
        try:
            base64.b64decode(v.replace('\n', '').replace('\r', ''), validate=True)
        except (ValueError, base64.binascii.Error):
            raise bad_request('%s: illegal base64 data in %s[%s]' % (what, field, k))
        out[k] = v.replace('\n', '').replace('\r', '')
    return out


def prepare_builtin(res, obj, old, errs):
    """Decode and validate the fields of the built-in kinds (normalising what the real
    server normalises)."""
    what = '%s in version "%s" cannot be handled as a %s' % (res.kind, res.version, res.kind)
    if res.plural == 'secrets':
        data = check_base64_map(what, 'v1.Secret.Data', obj.get('data'), errs) or {}
        sd = obj.pop('stringData', None)
        if sd is not None:
            if not isinstance(sd, dict) or not all(isinstance(v, str) for v in sd.values()):
                raise bad_request('%s: stringData must be a map of strings' % what)
            for k, v in sd.items():
                data[k] = base64.b64encode(v.encode()).decode()
        if data or 'data' in obj:
            obj['data'] = data
        if not obj.get('type'):
            obj['type'] = 'Opaque'
        for k in data:
            if not CONFIG_KEY.match(k) or len(k) > 253:
                errs.append(('data[%s]' % k, 'Invalid value: %s: a valid config key must '
                             'consist of alphanumeric characters, \'-\', \'_\' or \'.\' (e.g. '
                             '\'key.name\',  or \'KEY_NAME\',  or \'key-name\', regex used for '
                             'validation is \'[-._a-zA-Z0-9]+\')' % quote(k)))
        if obj['type'] == 'kubernetes.io/tls':
            for k in ('tls.crt', 'tls.key'):
                if k not in data:
                    errs.append(('data[%s]' % k, 'Required value'))
        if old is not None:
            if obj['type'] != old.get('type', 'Opaque'):
                errs.append(('type', 'Invalid value: %s: field is immutable' % quote(obj['type'])))
            if old.get('immutable') and obj.get('data') != old.get('data'):
                errs.append(('data', 'Forbidden: field is immutable when `immutable` is set'))
    elif res.plural == 'configmaps':
        data = obj.get('data')
        if data is not None and (not isinstance(data, dict) or
                                 not all(isinstance(v, str) for v in data.values())):
            raise bad_request('%s: json: cannot unmarshal into Go struct field ConfigMap.data '
                              'of type string' % what)
        binary = check_base64_map(what, 'v1.ConfigMap.BinaryData', obj.get('binaryData'), errs)
        keys = list(data or {}) + list(binary or {})
        for k in keys:
            if not CONFIG_KEY.match(k) or len(k) > 253:
                errs.append(('data[%s]' % k, 'Invalid value: %s: a valid config key must '
                             'consist of alphanumeric characters, \'-\', \'_\' or \'.\''
                             % quote(k)))
        for k in set(data or {}) & set(binary or {}):
            errs.append(('data[%s]' % k, 'Invalid value: %s: duplicate of key present in '
                         'binaryData' % quote(k)))
        if old is not None and old.get('immutable') and (
                obj.get('data') != old.get('data') or
                obj.get('binaryData') != old.get('binaryData')):
            errs.append(('data', 'Forbidden: field is immutable when `immutable` is set'))
    elif res.plural == 'leases':
        spec = obj.get('spec') or {}
        if not isinstance(spec, dict):
            raise bad_request('%s: spec must be an object' % what)
        for f in ('holderIdentity',):
            if f in spec and spec[f] is not None and not isinstance(spec[f], str):
                raise bad_request('%s: v1.Lease.Spec: v1.LeaseSpec.HolderIdentity: ReadString: '
                                  'expects " or n, but found %s' % (what, json.dumps(spec[f])[:1]))
        for f in ('leaseDurationSeconds', 'leaseTransitions'):
            v = spec.get(f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise bad_request('%s: v1.Lease.Spec: v1.LeaseSpec.%s: readUint64: unexpected '
                                  'character: %s' % (what, f[0].upper() + f[1:], json.dumps(v)))
            if f == 'leaseDurationSeconds' and isinstance(v, int) and v <= 0:
                errs.append(('spec.leaseDurationSeconds', 'Invalid value: %d: must be greater '
                             'than 0' % v))
        for f in ('acquireTime', 'renewTime'):
            v = spec.get(f)
            if v is None:
                continue
            if not isinstance(v, str) or not MICROTIME.match(v):
                raise bad_request(
                    '%s: v1.Lease.Spec: v1.LeaseSpec.%s: unmarshalerDecoder: parsing time %s as '
                    '"2006-01-02T15:04:05.000000Z07:00": cannot parse %s as ".000000"'
                    % (what, f[0].upper() + f[1:], json.dumps(v), json.dumps(v)))
    elif res.plural == 'namespaces':
        obj.setdefault('spec', {}).setdefault('finalizers', ['kubernetes'])
        if old is None:
            obj['status'] = {'phase': 'Active'}


# ---- the store -------------------------------------------------------------------------------

class WatchFault:
    def __init__(self, spec):
        self.kind = spec.get('kind')
        if self.kind not in ('split', 'close'):
            raise bad_request('watch-fault kind must be "split" or "close"')
        self.count = int(spec.get('count', 1))
        self.path = re.compile(spec['path']) if spec.get('path') else None
        self.bookmarks = bool(spec.get('bookmarks'))


class Fault:
    def __init__(self, spec):
        self.method = (spec.get('method') or '*').upper()
        self.path = re.compile(spec['path']) if spec.get('path') else None
        self.query = re.compile(spec['query']) if spec.get('query') else None
        self.code = int(spec.get('code', 500))
        self.count = int(spec.get('count', 1))
        self.retry_after = spec.get('retry_after')
        self.hold = float(spec['hold']) if spec.get('hold') is not None else None
        self.reason = spec.get('reason') or REASONS.get(self.code, 'Unknown')
        self.message = spec.get('message') or 'injected by the test (%d %s)' % (
            self.code, self.reason)

    def matches(self, method, path, query):
        return (self.method in ('*', method) and (self.path is None or self.path.search(path))
                and (self.query is None or self.query.search(query)))

    def describe(self):
        return {'method': self.method, 'path': self.path.pattern if self.path else None,
                'query': self.query.pattern if self.query else None, 'code': self.code,
                'count': self.count, 'retry_after': self.retry_after, 'hold': self.hold}


class Store:
    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 0
        self.objects = {}       # (group, plural, namespace, name) -> object
        self.history = []       # (rv, gk, namespace, name, type, obj, old)
        self.history_rvs = []
        self.floor = 0          # watches and lists from below it get 410 Expired
        self.resources = {}     # (group, version) -> {plural: Resource}
        self.faults = []
        self.watch_faults = []
        self.end_gen = 0
        self.bookmark_gen = 0
        self.watches = 0
        self.requests = []
        for r in BUILTINS:
            self.register(r)

    # -- resources

    def register(self, res):
        self.resources.setdefault((res.group, res.version), {})[res.plural] = res

    def unregister_crd(self, crd_name):
        for gv in list(self.resources):
            for plural, r in list(self.resources[gv].items()):
                if r.crd == crd_name:
                    del self.resources[gv][plural]
            if not self.resources[gv]:
                del self.resources[gv]

    def lookup(self, group, version, plural):
        return self.resources.get((group, version), {}).get(plural)

    def groups(self):
        """{group: [versions]} of the named groups."""
        out = {}
        for g, v in sorted(self.resources):
            if g:
                out.setdefault(g, []).append(v)
        return out

    # -- objects

    def get(self, res, ns, name):
        return self.objects.get((res.group, res.plural, ns or '', name))

    def state_at(self, rv):
        """{key: object} as it was at rv (floor <= rv <= self.rv)."""
        if rv == self.rv:
            return self.objects
        state = {}
        for e in self.history:
            if e[0] > rv:
                break
            key = e[1] + (e[2], e[3])
            if e[4] == 'DELETED':
                state.pop(key, None)
            else:
                state[key] = e[5]
        return state

    def commit(self, res, ns, name, etype, new, old):
        """Store new (None: delete) as a new revision; returns the stored object."""
        self.rv += 1
        key = (res.group, res.plural, ns or '', name)
        if etype == 'DELETED':
            obj = copy.deepcopy(old)
            obj['metadata']['resourceVersion'] = str(self.rv)
            del self.objects[key]
        else:
            obj = new
            obj['metadata']['resourceVersion'] = str(self.rv)
            self.objects[key] = obj
        self.history.append((self.rv, res.gk, ns or '', name, etype, obj, old))
        self.history_rvs.append(self.rv)
        self.cond.notify_all()
        return obj

    def compact(self):
        """New watches and lists from below the current resourceVersion get 410; the history
        stays, so that open watches still get every event (the real server serves them from
        its watch cache, whatever etcd compacts)."""
        self.floor = self.rv
        return self.floor

    def events_after(self, rv):
        return self.history[bisect.bisect_right(self.history_rvs, rv):]


STORE = Store()


# ---- object life cycle -----------------------------------------------------------------------

def spec_part(obj):
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status', 'apiVersion', 'kind')}


def with_gvk(res, obj):
    out = dict(obj)
    out['apiVersion'] = res.gv
    out['kind'] = res.kind
    # apiVersion and kind first, as the real server writes them
    return {'apiVersion': out.pop('apiVersion'), 'kind': out.pop('kind'), **out}


def for_version(res, obj):
    """An object of the store as the version of res shows it (custom resources of other
    served versions share the store)."""
    return with_gvk(res, obj)


def decode_body(handler, res, body):
    ctype = (handler.headers.get('Content-Type') or 'application/json').split(';')[0].strip()
    try:
        if ctype in ('application/yaml', 'application/apply-patch+yaml'):
            obj = yaml.safe_load(body.decode() or 'null')
        elif ctype == 'application/vnd.kubernetes.protobuf':
            raise ApiError(415, 'the body of the request was in an unknown format - accepted '
                           'media types include: application/json, application/yaml',
                           'UnsupportedMediaType')
        else:
            obj = json.loads(body.decode() or 'null')
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise bad_request('the object provided is unrecognized: %s' % e)
    return obj


def check_identity(res, obj):
    if not isinstance(obj, dict):
        raise bad_request('Object \'Kind\' is missing in \'%s\'' % json.dumps(obj)[:100])
    av, kind = obj.get('apiVersion'), obj.get('kind')
    if av and av != res.gv and not (res.custom and av.split('/')[0] == res.group):
        raise bad_request('the API version in the data (%s) does not match the expected API '
                          'version (%s)' % (av, res.gv))
    if kind and kind != res.kind:
        raise bad_request('%s in version "%s" cannot be handled as a %s: the kind in the data '
                          '(%s) does not match the expected kind' % (res.kind, res.version,
                                                                     res.kind, kind))


def validate(res, obj, old, name):
    """Check and normalise obj before it is stored (422 with every cause)."""
    errs = []
    check_meta_types(res, obj)
    validate_meta(res, obj, errs)
    if res.custom:
        schema = res.schema or {'type': 'object', 'x-kubernetes-preserve-unknown-fields': True}
        props = schema.get('properties') or {}
        mschema = (props.get('metadata') or {}).get('properties', {}).get('name')
        if mschema:
            check_schema(mschema, obj['metadata'].get('name', ''), 'metadata.name', errs)
        body = {k: v for k, v in obj.items() if k not in ('metadata', 'apiVersion', 'kind')}
        root = dict(schema)
        root['properties'] = {k: v for k, v in props.items()
                              if k not in ('metadata', 'apiVersion', 'kind')}
        pruned = check_schema(root, body, '', errs)
        for k in list(obj):
            if k not in ('metadata', 'apiVersion', 'kind'):
                del obj[k]
        obj.update(pruned)
    else:
        prepare_builtin(res, obj, old, errs)
        if res.plural == 'customresourcedefinitions':
            validate_crd(obj, errs)
    if errs:
        raise invalid(res, name, errs)


def validate_crd(obj, errs):
    spec = obj.get('spec') or {}
    names = spec.get('names') or {}
    for f in ('group',):
        if not spec.get(f):
            errs.append(('spec.%s' % f, 'Required value'))
    for f in ('plural', 'kind'):
        if not names.get(f):
            errs.append(('spec.names.%s' % f, 'Required value'))
    if not spec.get('versions'):
        errs.append(('spec.versions', 'Invalid value: null: must have exactly one version '
                     'marked as storage version'))
    want = '%s.%s' % (names.get('plural'), spec.get('group'))
    if obj['metadata'].get('name') != want:
        errs.append(('metadata.name', 'Invalid value: %s: must be spec.names.plural+"."+'
                     'spec.group' % quote(obj['metadata'].get('name'))))
    if not errs:
        names.setdefault('singular', names['kind'].lower())
        names.setdefault('listKind', names['kind'] + 'List')
        spec.setdefault('scope', 'Namespaced')
        for v in spec['versions']:
            if not isinstance(v, dict) or 'name' not in v:
                errs.append(('spec.versions', 'Invalid value: a version needs a name'))


def crd_status(obj):
    now = now_rfc3339()
    names = obj['spec']['names']
    return {'acceptedNames': {k: names[k] for k in ('plural', 'singular', 'kind', 'listKind',
                                                      'shortNames', 'categories') if k in names},
            'conditions': [
                {'type': 'NamesAccepted', 'status': 'True', 'lastTransitionTime': now,
                 'reason': 'NoConflicts', 'message': 'no conflicts found'},
                {'type': 'Established', 'status': 'True', 'lastTransitionTime': now,
                 'reason': 'InitialNamesAccepted', 'message': 'the initial names have been '
                 'accepted'}],
            'storedVersions': [v['name'] for v in obj['spec']['versions'] if v.get('storage')]}


def after_write(res, obj, old):
    """The side effects of a committed write (the lock is held)."""
    if res.plural == 'customresourcedefinitions':
        if old is not None:
            STORE.unregister_crd(old['metadata']['name'])
        if obj is not None:
            for r in resources_of_crd(obj):
                STORE.register(r)
        else:
            # the CRD is gone, and with it every object of its resources
            spec = old['spec']
            for key in [k for k in STORE.objects if k[:2] == (spec['group'],
                                                               spec['names']['plural'])]:
                r = Resource(spec['group'], '', spec['names']['plural'], spec['names']['kind'],
                             spec.get('scope') == 'Namespaced', custom=True)
                STORE.commit(r, key[2], key[3], 'DELETED', None, STORE.objects[key])
    if res.plural == 'namespaces' and obj is None:
        ns = old['metadata']['name']
        for key in [k for k in STORE.objects if k[2] == ns]:
            r = find_resource_by_gk(key[0], key[1])
            if r is not None:
                STORE.commit(r, ns, key[3], 'DELETED', None, STORE.objects[key])


def find_resource_by_gk(group, plural):
    for (g, v), rs in STORE.resources.items():
        if g == group and plural in rs:
            return rs[plural]
    return None


def create_object(res, ns, obj, dry_run=False):
    check_identity(res, obj)
    obj = copy.deepcopy(obj)
    obj = with_gvk(res, obj)
    check_meta_types(res, obj)
    meta = obj['metadata']
    if res.namespaced:
        if meta.get('namespace') and meta['namespace'] != ns:
            raise bad_request('the namespace of the provided object does not match the '
                              'namespace sent on the request')
        meta['namespace'] = ns
    else:
        meta.pop('namespace', None)
    if not meta.get('name'):
        if meta.get('generateName'):
            meta['name'] = meta['generateName'] + uuid.uuid4().hex[:5]
        else:
            raise invalid(res, '', [('metadata.name', 'Required value: name or generateName '
                                     'is required')])
    name = meta['name']
    for f in ('resourceVersion', 'uid', 'deletionTimestamp', 'deletionGracePeriodSeconds',
              'selfLink', 'managedFields'):
        meta.pop(f, None)
    if res.custom and res.status:
        obj.pop('status', None)
    validate(res, obj, None, name)
    meta['uid'] = str(uuid.uuid4())
    meta['creationTimestamp'] = now_rfc3339()
    if res.custom or res.plural == 'customresourcedefinitions':
        meta['generation'] = 1
    if res.plural == 'customresourcedefinitions':
        obj['status'] = crd_status(obj)
    with STORE.cond:
        if res.namespaced and STORE.get(ns_resource(), '', ns) is None:
            raise ApiError(404, 'namespaces "%s" not found' % ns,
                           details={'name': ns, 'kind': 'namespaces'})
        if STORE.get(res, ns, name) is not None:
            raise already_exists(res, name)
        if dry_run:
            return obj
        stored = STORE.commit(res, ns, name, 'ADDED', obj, None)
        after_write(res, stored, None)
        return stored


def ns_resource():
    return STORE.lookup('', 'v1', 'namespaces')


def finish_update(res, ns, name, old, new, sub, dry_run=False):
    """Store new as the next version of old (the lock is held); returns (object, changed)."""
    new = with_gvk(res, new)
    check_meta_types(res, new)
    meta, ometa = new['metadata'], old['metadata']
    if meta.get('name', name) != name:
        raise bad_request('the name of the object (%s) does not match the name on the URL (%s)'
                          % (meta.get('name'), name))
    if res.namespaced and meta.get('namespace', ns) != ns:
        raise bad_request('the namespace of the provided object does not match the namespace '
                          'sent on the request')
    rv = meta.get('resourceVersion')
    if rv and rv != ometa['resourceVersion']:
        raise conflict(res, name)
    if not rv and res.custom:
        raise invalid(res, name, [('metadata.resourceVersion', 'Invalid value: 0x0: must be '
                                   'specified for an update')])
    if meta.get('uid') and meta['uid'] != ometa['uid']:
        raise ApiError(409, 'Precondition failed: UID in precondition: %s, UID in object meta: '
                       '%s' % (meta['uid'], ometa['uid']), 'Conflict')
    if sub == 'status':
        # only the status changes; everything else stays as it was
        status = new.get('status')
        new = copy.deepcopy(old)
        new = with_gvk(res, new)
        if status is None:
            new.pop('status', None)
        else:
            new['status'] = status
    else:
        if res.status and res.plural != 'namespaces':
            if 'status' in old:
                new['status'] = copy.deepcopy(old['status'])
            else:
                new.pop('status', None)
        elif res.plural == 'namespaces':
            new['status'] = copy.deepcopy(old.get('status'))
        meta = new['metadata']
        for f in ('uid', 'creationTimestamp', 'generation', 'deletionTimestamp',
                  'deletionGracePeriodSeconds'):
            if f in ometa:
                meta[f] = ometa[f]
            else:
                meta.pop(f, None)
        meta['name'] = name
        if res.namespaced:
            meta['namespace'] = ns
        meta.pop('managedFields', None)
        meta.pop('selfLink', None)
    new['metadata']['resourceVersion'] = ometa['resourceVersion']
    validate(res, new, old, name)
    if res.plural == 'customresourcedefinitions' and sub is None:
        new['status'] = crd_status(new)
    if (res.custom or res.plural == 'customresourcedefinitions') and sub is None and \
            spec_part(new) != spec_part(old):
        new['metadata']['generation'] = ometa.get('generation', 1) + 1
    if new == old:
        return old, False
    if dry_run:
        return new, True
    if new['metadata'].get('deletionTimestamp') and not new['metadata'].get('finalizers'):
        gone = STORE.commit(res, ns, name, 'DELETED', None, new)
        after_write(res, None, old)
        return gone, True
    stored = STORE.commit(res, ns, name, 'MODIFIED', new, old)
    after_write(res, stored, old)
    return stored, True


def delete_object(res, ns, name, options, dry_run=False):
    with STORE.cond:
        old = STORE.get(res, ns, name)
        if old is None:
            raise not_found(res, name)
        pre = (options or {}).get('preconditions') or {}
        if pre.get('resourceVersion') and pre['resourceVersion'] != old['metadata'][
                'resourceVersion']:
            raise ApiError(409, 'Operation cannot be fulfilled on %s "%s": the ResourceVersion in '
                           'the precondition (%s) does not match the ResourceVersion in record '
                           '(%s). The object might have been modified' % (
                               res.qualified, name, pre['resourceVersion'],
                               old['metadata']['resourceVersion']), 'Conflict')
        if pre.get('uid') and pre['uid'] != old['metadata']['uid']:
            raise ApiError(409, 'Operation cannot be fulfilled on %s "%s": the UID in the '
                           'precondition (%s) does not match the UID in record (%s). The object '
                           'might have been deleted and then recreated' % (
                               res.qualified, name, pre['uid'], old['metadata']['uid']),
                           'Conflict')
        if dry_run:
            return old, True
        if old['metadata'].get('finalizers'):
            if old['metadata'].get('deletionTimestamp'):
                return old, False
            new = copy.deepcopy(old)
            new['metadata']['deletionTimestamp'] = now_rfc3339()
            new['metadata']['deletionGracePeriodSeconds'] = 0
            if res.custom:
                new['metadata']['generation'] = old['metadata'].get('generation', 1) + 1
            return STORE.commit(res, ns, name, 'MODIFIED', new, old), False
        gone = STORE.commit(res, ns, name, 'DELETED', None, old)
        after_write(res, None, old)
        return gone, True


# ---- output ----------------------------------------------------------------------------------

def list_item(res, obj):
    """An item of a list: custom resources keep apiVersion and kind, built-in lists drop them
    as the real server's typed lists do."""
    if res.custom:
        return for_version(res, obj)
    return {k: v for k, v in obj.items() if k not in ('apiVersion', 'kind')}


def table_columns(res):
    name = {'name': 'Name', 'type': 'string', 'format': 'name', 'priority': 0,
            'description': 'Name must be unique within a namespace.'}
    age = {'name': 'Age', 'type': 'string', 'format': '', 'priority': 0,
           'description': 'CreationTimestamp is a timestamp representing the server time when '
           'this object was created.'}
    if res.custom:
        cols = [name]
        for c in res.columns or [{'name': 'Age', 'type': 'date',
                                  'jsonPath': '.metadata.creationTimestamp'}]:
            cols.append({'name': c['name'], 'type': c.get('type', 'string'),
                         'format': c.get('format', ''), 'description': c.get('description', ''),
                         'priority': c.get('priority', 0)})
        return cols
    extra = {
        'secrets': [('Type', 'string'), ('Data', 'integer')],
        'configmaps': [('Data', 'integer')],
        'namespaces': [('Status', 'string')],
        'leases': [('Holder', 'string')],
        'customresourcedefinitions': [('Created At', 'date')],
    }.get(res.plural, [])
    cols = [name] + [{'name': n, 'type': t, 'format': '', 'description': '', 'priority': 0}
                     for n, t in extra]
    if res.plural != 'customresourcedefinitions':
        cols.append(age)
    return cols


def table_cells(res, obj):
    if res.custom:
        cells = [obj['metadata'].get('name')]
        for c in res.columns or [{'type': 'date', 'jsonPath': '.metadata.creationTimestamp'}]:
            found = jsonpath(c['jsonPath'], obj)
            if not found or found[0] is None:
                cells.append(None)
                continue
            v = found[0]
            t = c.get('type', 'string')
            if t == 'date':
                ts = parse_rfc3339(v) if isinstance(v, str) else None
                cells.append('<unknown>' if ts is None else human_duration(time.time() - ts))
            elif t == 'string':
                cells.append(v if isinstance(v, str) else json.dumps(v))
            else:
                cells.append(v)
        return cells
    cells = [obj['metadata'].get('name')]
    if res.plural == 'secrets':
        cells += [obj.get('type', 'Opaque'), len(obj.get('data') or {})]
    elif res.plural == 'configmaps':
        cells += [len(obj.get('data') or {}) + len(obj.get('binaryData') or {})]
    elif res.plural == 'namespaces':
        cells += [(obj.get('status') or {}).get('phase', '')]
    elif res.plural == 'leases':
        cells += [(obj.get('spec') or {}).get('holderIdentity') or '']
    elif res.plural == 'customresourcedefinitions':
        cells += [obj['metadata'].get('creationTimestamp')]
        return cells
    cells.append(age_cell(obj))
    return cells


def partial_meta(obj, version):
    return {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/' + version,
            'metadata': obj['metadata']}


def to_table(res, objs, fmt, rv, include='Metadata', meta_extra=None):
    version = fmt[1]
    rows = []
    for o in objs:
        row = {'cells': table_cells(res, o)}
        if include == 'Object':
            row['object'] = for_version(res, o)
        elif include != 'None':
            row['object'] = partial_meta(o, version)
        rows.append(row)
    meta = {'resourceVersion': str(rv)}
    meta.update(meta_extra or {})
    return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/' + version, 'metadata': meta,
            'columnDefinitions': table_columns(res), 'rows': rows}


def negotiate(accept):
    """('json',) ('yaml',) ('table', version) ('partial', version); 406 when none fits."""
    if not accept:
        return ('json',)
    for part in accept.split(','):
        fields = [f.strip() for f in part.split(';')]
        mt = fields[0].lower()
        params = dict(f.split('=', 1) for f in fields[1:] if '=' in f)
        if mt in ('application/json', '*/*', 'application/*'):
            as_ = params.get('as')
            if not as_:
                return ('json',)
            if params.get('g') == 'meta.k8s.io' and params.get('v') in ('v1', 'v1beta1'):
                if as_ == 'Table':
                    return ('table', params['v'])
                if as_ in ('PartialObjectMetadata', 'PartialObjectMetadataList'):
                    return ('partial', params['v'])
        elif mt == 'application/yaml' and 'as' not in params:
            return ('yaml',)
    raise ApiError(406, 'only the following media types are accepted: application/json, '
                   'application/yaml, application/vnd.kubernetes.protobuf', 'NotAcceptable')


# ---- the HTTP side ---------------------------------------------------------------------------

class ClientGone(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    _record = None
    _logged = False
    _hold = 0
    server_version = 'etcdproxy-test-apiserver'
    sys_version = ''

    def log_message(self, fmt, *args):
        if OPTS.log:
            with open(OPTS.log, 'a') as f:
                f.write('%s %s\n' % (time.strftime('%H:%M:%S'), fmt % args))

    def log_line(self, text):
        if OPTS.log:
            with open(OPTS.log, 'a') as f:
                f.write('%s %s\n' % (time.strftime('%H:%M:%S'), text))

    def send_response(self, code, message=None):
        if self._record is not None and not self._logged:
            self._logged = True
            entry = dict(self._record, code=code)
            with STORE.cond:
                STORE.requests.append(entry)
        super().send_response(code, message)

    def do_GET(self):
        self.handle_any('GET')

    def do_POST(self):
        self.handle_any('POST')

    def do_PUT(self):
        self.handle_any('PUT')

    def do_PATCH(self):
        self.handle_any('PATCH')

    def do_DELETE(self):
        self.handle_any('DELETE')

    # -- plumbing

    def read_body(self):
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            out = b''
            while True:
                line = self.rfile.readline()
                size = int(line.split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(n) if n else b''

    def send_bytes(self, code, data, ctype='application/json', headers=None):
        if self._hold:
            hold, self._hold = self._hold, 0
            time.sleep(hold)
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.send_header('Cache-Control', 'no-cache, private')
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def send_obj(self, code, obj, fmt=('json',), headers=None):
        if fmt[0] == 'yaml':
            self.send_bytes(code, yaml.safe_dump(obj, sort_keys=False).encode(),
                            'application/yaml', headers)
        else:
            self.send_bytes(code, (json.dumps(obj) + '\n').encode(), 'application/json',
                            headers)

    def send_error_obj(self, e):
        self.send_obj(e.code, e.status(), headers=e.headers)

    def authenticate(self):
        if OPTS.tls:
            try:
                cert = self.connection.getpeercert()
            except (ValueError, AttributeError):
                cert = None
            if cert:
                for rdn in cert.get('subject', ()):
                    for k, v in rdn:
                        if k == 'commonName':
                            return v
                return 'client-certificate'
        if OPTS.tokens:
            auth = self.headers.get('Authorization') or ''
            if auth.startswith('Bearer '):
                token = auth[7:].strip()
                try:
                    with open(OPTS.tokens) as f:
                        tokens = {line.strip() for line in f if line.strip()}
                except OSError:
                    tokens = set()
                if token and token in tokens:
                    return 'token'
            return None
        return None if OPTS.tls else 'anonymous'

    def handle_any(self, method):
        self._record = None
        self._logged = False
        self._hold = 0
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self.read_body() if method in ('POST', 'PUT', 'PATCH', 'DELETE') else b''
            if path.startswith('/_test/'):
                return self.hook(method, path, body)
            user = self.authenticate()
            self._record = {'method': method, 'path': path, 'query': url.query,
                            'time': time.time(), 'user': user,
                            'content_type': self.headers.get('Content-Type'),
                            'agent': self.headers.get('User-Agent') or '',
                            'body': body[:8192].decode(errors='replace')}
            self.log_line('%s %s?%s user=%s accept=%s ctype=%s' % (
                method, path, url.query, user, self.headers.get('Accept'),
                self.headers.get('Content-Type')))
            if user is None:
                raise ApiError(401, 'Unauthorized', 'Unauthorized')
            with STORE.cond:
                for f in STORE.faults:
                    if f.count > 0 and f.matches(method, path, url.query):
                        f.count -= 1
                        STORE.faults = [x for x in STORE.faults if x.count > 0]
                        if f.hold is not None:
                            self._hold = f.hold
                            break
                        headers = {}
                        if f.retry_after is not None:
                            headers['Retry-After'] = f.retry_after
                        raise ApiError(f.code, f.message, f.reason, headers=headers)
            self.route(method, path, params, body)
        except ApiError as e:
            self.log_line('  -> %d %s' % (e.code, e.message))
            self.send_error_obj(e)
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - the test must see a 500, not a hang
            import traceback
            self.log_line('  -> 500 %s\n%s' % (e, traceback.format_exc()))
            sys.stderr.write(traceback.format_exc())
            try:
                self.send_error_obj(ApiError(500, 'internal error: %s' % e, 'InternalError'))
            except OSError:
                pass

    # -- test hooks

    def hook(self, method, path, body):
        try:
            arg = json.loads(body.decode() or '{}')
        except ValueError:
            raise bad_request('the hook takes a JSON body')
        name = path[len('/_test/'):]
        with STORE.cond:
            if method == 'POST' and name == 'compact':
                out = {'floor': STORE.compact()}
            elif method == 'POST' and name == 'fault':
                STORE.faults.append(Fault(arg))
                out = {'faults': [f.describe() for f in STORE.faults]}
            elif method == 'GET' and name == 'fault':
                out = {'faults': [f.describe() for f in STORE.faults]}
            elif method == 'POST' and name == 'fault/clear':
                STORE.faults = []
                out = {'faults': []}
            elif method == 'POST' and name == 'watch-fault':
                STORE.watch_faults.append(WatchFault(arg))
                out = {'pending': len(STORE.watch_faults)}
            elif method == 'POST' and name == 'end-watches':
                STORE.end_gen += 1
                STORE.cond.notify_all()
                out = {'ended': STORE.watches}
            elif method == 'POST' and name == 'bookmark':
                STORE.bookmark_gen += 1
                STORE.cond.notify_all()
                out = {'watches': STORE.watches}
            elif method == 'GET' and name == 'requests':
                out = list(STORE.requests)
            elif method == 'POST' and name == 'requests/clear':
                STORE.requests = []
                out = {}
            elif method == 'GET' and name == 'state':
                out = {'resourceVersion': STORE.rv, 'floor': STORE.floor,
                       'watches': STORE.watches}
            else:
                raise ApiError(404, 'no test hook %s %s' % (method, path))
        self.send_obj(200, out)

    # -- routing

    def route(self, method, path, params, body):
        parts = [p for p in path.split('/') if p]
        if method == 'GET' and self.discovery(parts, params):
            return
        if parts[:1] == ['api'] and len(parts) >= 2:
            group, version, rest = '', parts[1], parts[2:]
        elif parts[:1] == ['apis'] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, 'the server could not find the requested resource', 'NotFound',
                           details={'causes': [{'reason': 'UnexpectedServerResponse',
                                                'message': '404 page not found'}]})
        watch_path = False
        if rest[:1] == ['watch']:
            watch_path, rest = True, rest[1:]
        ns = None
        if rest[:1] == ['namespaces'] and len(rest) >= 3 and not (
                len(rest) == 3 and rest[2] in ('status', 'finalize')):
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, 'the server could not find the requested resource')
        with STORE.cond:
            res = STORE.lookup(group, version, rest[0])
        if res is None:
            raise ApiError(404, 'the server could not find the requested resource')
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == 'status' and res.status):
            raise ApiError(404, 'the server could not find the requested resource')
        if res.namespaced and ns is None and (name is not None or method not in ('GET',)):
            raise ApiError(404, 'the server could not find the requested resource')
        if not res.namespaced and ns is not None:
            raise ApiError(404, 'the server could not find the requested resource')
        ns = ns or ''
        dry = params.get('dryRun') == 'All'
        watch = watch_path or params.get('watch') in ('1', 'true', 'True')
        if method == 'GET' and watch:
            if name is not None:
                fs = params.get('fieldSelector')
                params['fieldSelector'] = 'metadata.name=%s' % name + (',' + fs if fs else '')
            return self.serve_watch(res, ns if res.namespaced and (ns or name) else None,
                                    params)
        if watch_path:
            raise ApiError(405, 'the server does not allow this method on the requested '
                           'resource', 'MethodNotAllowed')
        fmt = negotiate(self.headers.get('Accept'))
        if name is None:
            if method == 'GET':
                return self.serve_list(res, ns if res.namespaced and ns else None, params, fmt)
            if method == 'POST':
                obj = decode_body(self, res, body)
                created = create_object(res, ns, obj, dry)
                return self.send_obj(201, for_version(res, created), fmt)
            if method == 'DELETE':
                return self.delete_collection(res, ns if res.namespaced and ns else None, params,
                                              body, fmt, dry)
            raise ApiError(405, 'the server does not allow this method on the requested '
                           'resource', 'MethodNotAllowed')
        if method == 'GET':
            with STORE.cond:
                obj = STORE.get(res, ns, name)
            if obj is None:
                raise not_found(res, name)
            return self.send_obj(200, self.shape(res, obj, fmt), fmt)
        if method == 'PUT':
            new = decode_body(self, res, body)
            check_identity(res, new)
            with STORE.cond:
                old = STORE.get(res, ns, name)
                if old is None:
                    raise not_found(res, name)
                out, _ = finish_update(res, ns, name, old, copy.deepcopy(new), sub, dry)
            return self.send_obj(200, for_version(res, out), fmt)
        if method == 'PATCH':
            return self.patch(res, ns, name, sub, body, fmt, dry)
        if method == 'DELETE':
            options = decode_body(self, res, body) if body else None
            if sub is not None:
                raise ApiError(405, 'the server does not allow this method on the requested '
                               'resource', 'MethodNotAllowed')
            obj, gone = delete_object(res, ns, name, options, dry)
            if not res.custom and gone:
                st = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                      'details': {'name': name, 'group': res.group, 'kind': res.plural,
                                  'uid': obj['metadata']['uid']}}
                return self.send_obj(200, st, fmt)
            return self.send_obj(200 if gone else 202, for_version(res, obj), fmt)
        raise ApiError(405, 'the server does not allow this method on the requested resource',
                       'MethodNotAllowed')

    def shape(self, res, obj, fmt):
        if fmt[0] == 'table':
            return to_table(res, [obj], fmt, obj['metadata']['resourceVersion'],
                            self.query_include())
        if fmt[0] == 'partial':
            return partial_meta(obj, fmt[1])
        return for_version(res, obj)

    def query_include(self):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        return q.get('includeObject', 'Metadata')

    def patch(self, res, ns, name, sub, body, fmt, dry):
        ctype = (self.headers.get('Content-Type') or '').split(';')[0].strip()
        accepted = ['application/json-patch+json', 'application/merge-patch+json',
                    'application/apply-patch+yaml']
        if not res.custom:
            accepted.append('application/strategic-merge-patch+json')
        if ctype not in accepted:
            raise ApiError(415, 'the body of the request was in an unknown format - accepted '
                           'media types include: %s' % ', '.join(accepted),
                           'UnsupportedMediaType')
        try:
            if ctype == 'application/apply-patch+yaml':
                patch = yaml.safe_load(body.decode() or '{}')
            else:
                patch = json.loads(body.decode() or 'null')
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request('error decoding patch: %s' % e)
        with STORE.cond:
            old = STORE.get(res, ns, name)
            if old is None:
                if ctype == 'application/apply-patch+yaml' and sub is None:
                    if isinstance(patch, dict):
                        patch.setdefault('metadata', {})['name'] = name
                    created = create_object(res, ns, patch, dry)
                    return self.send_obj(201, for_version(res, created), fmt)
                raise not_found(res, name)
            current = for_version(res, old)
            if ctype == 'application/json-patch+json':
                new = json_patch(current, patch)
            elif ctype == 'application/merge-patch+json':
                if not isinstance(patch, dict):
                    raise bad_request('error decoding patch: a merge patch must be an object')
                new = merge_patch(current, patch)
            elif ctype == 'application/strategic-merge-patch+json':
                if not isinstance(patch, dict):
                    raise bad_request('error decoding patch: a strategic merge patch must be an '
                                      'object')
                new = strategic_merge_patch(current, patch)
            else:
                # server-side apply, approximated: the applied configuration merged in
                if not isinstance(patch, dict):
                    raise bad_request('error decoding YAML: the apply configuration must be '
                                      'an object')
                check_identity(res, patch)
                new = merge_patch(current, patch)
            if not isinstance(new, dict):
                raise bad_request('the patch does not leave an object')
            if new.get('metadata', {}).get('resourceVersion') in (None, ''):
                # a patch that drops the resourceVersion is unconditional
                new.setdefault('metadata', {})['resourceVersion'] = old['metadata'][
                    'resourceVersion']
            out, _ = finish_update(res, ns, name, old, new, sub, dry)
        self.send_obj(200, for_version(res, out), fmt)

    def delete_collection(self, res, ns, params, body, fmt, dry):
        lsel = parse_label_selector(params.get('labelSelector'))
        fsel = parse_field_selector(params.get('fieldSelector'), res)
        options = decode_body(self, res, body) if body else None
        with STORE.cond:
            names = [(k[2], k[3]) for k, o in sorted(STORE.objects.items())
                     if k[:2] == res.gk and (ns is None or k[2] == ns)
                     and labels_match(lsel, o['metadata'].get('labels'))
                     and fields_match(fsel, o)]
            items = []
            for n_ns, n in names:
                obj, _ = delete_object(res, n_ns, n, options, dry)
                items.append(list_item(res, obj))
            rv = STORE.rv
        self.send_obj(200, {'apiVersion': res.gv, 'kind': res.list_kind,
                            'metadata': {'resourceVersion': str(rv)}, 'items': items}, fmt)

    # -- discovery

    def discovery(self, parts, params):
        p = '/'.join(parts)
        if p in ('healthz', 'livez', 'readyz'):
            self.send_bytes(200, b'ok', 'text/plain; charset=utf-8')
            return True
        if p == 'version':
            self.send_obj(200, SERVER_VERSION)
            return True
        if p == 'openapi/v2':
            accept = self.headers.get('Accept') or ''
            if 'protobuf' in accept and 'json' not in accept.split(',')[0]:
                # an empty protobuf message is a valid, empty gnostic Document: clients
                # find no schema for any kind and skip client-side validation
                self.send_bytes(200, b'', 'application/octet-stream')
            else:
                self.send_obj(200, {'swagger': '2.0', 'info': {
                    'title': 'Kubernetes', 'version': SERVER_VERSION['gitVersion']},
                    'paths': {}, 'definitions': {}})
            return True
        if p == 'openapi/v3':
            self.send_obj(200, {'paths': {}})
            return True
        with STORE.cond:
            groups = STORE.groups()
            if p == 'api':
                self.send_obj(200, {'kind': 'APIVersions', 'versions': ['v1'],
                                    'serverAddressByClientCIDRs': [{
                                        'clientCIDR': '0.0.0.0/0',
                                        'serverAddress': OPTS.listen}]})
                return True
            if p == 'apis':
                self.send_obj(200, {'kind': 'APIGroupList', 'apiVersion': 'v1', 'groups': [
                    self.api_group(g, vs) for g, vs in groups.items()]})
                return True
            if len(parts) == 2 and parts[0] == 'apis' and parts[1] in groups:
                self.send_obj(200, dict(self.api_group(parts[1], groups[parts[1]]),
                                        kind='APIGroup', apiVersion='v1'))
                return True
            gv = None
            if len(parts) == 2 and parts[0] == 'api':
                gv = ('', parts[1])
            elif len(parts) == 3 and parts[0] == 'apis':
                gv = (parts[1], parts[2])
            if gv is not None and gv in STORE.resources:
                resources = []
                for r in STORE.resources[gv].values():
                    resources.extend(r.discovery())
                self.send_obj(200, {'kind': 'APIResourceList', 'apiVersion': 'v1',
                                    'groupVersion': '%s/%s' % gv if gv[0] else gv[1],
                                    'resources': resources})
                return True
        return False

    @staticmethod
    def api_group(g, versions):
        vs = [{'groupVersion': '%s/%s' % (g, v), 'version': v} for v in versions]
        return {'name': g, 'versions': vs, 'preferredVersion': vs[0]}

    # -- list

    def serve_list(self, res, ns, params, fmt):
        lsel = parse_label_selector(params.get('labelSelector'))
        fsel = parse_field_selector(params.get('fieldSelector'), res)
        rv_s = params.get('resourceVersion', '')
        match = params.get('resourceVersionMatch', '')
        cont = params.get('continue', '')
        limit = int(params.get('limit') or 0)
        if match and not rv_s:
            raise bad_request('resourceVersionMatch is forbidden unless resourceVersion is '
                              'provided')
        if match and cont:
            raise bad_request('resourceVersionMatch is forbidden when continue is provided')
        if match not in ('', 'Exact', 'NotOlderThan'):
            raise bad_request('resourceVersionMatch: Unsupported value: "%s": supported values: '
                              '"Exact", "NotOlderThan"' % match)
        if rv_s and not rv_s.isdigit():
            raise bad_request('resourceVersion: Invalid value: "%s": strconv.ParseUint: parsing '
                              '"%s": invalid syntax' % (rv_s, rv_s))
        if match == 'Exact' and rv_s == '0':
            raise bad_request('resourceVersionMatch "exact" is forbidden for resourceVersion '
                              '"0"')
        start_after = None
        with STORE.cond:
            if cont:
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont.encode()).decode())
                    at, start_after = int(token['rv']), tuple(token['start'])
                except (ValueError, KeyError, TypeError):
                    raise bad_request('continue key is not valid: incorrect encoded start '
                                      'resourceVersion (version meta.k8s.io/v1)')
                if at < STORE.floor:
                    raise ApiError(410, 'The provided continue parameter is too old to display '
                                   'a consistent list result. You can start a new list without '
                                   'the continue parameter.', 'Expired')
            elif match == 'Exact':
                at = int(rv_s)
                if at < STORE.floor:
                    raise ApiError(410, 'The resourceVersion for the provided list is too old.',
                                   'Expired')
            else:
                at = STORE.rv
            if at > STORE.rv:
                STORE.cond.wait_for(lambda: STORE.rv >= at, timeout=3)
                if at > STORE.rv:
                    raise ApiError(504, 'Too large resource version: %d, current: %d' % (
                        at, STORE.rv), 'Timeout', details={'causes': [{
                            'reason': 'ResourceVersionTooLarge',
                            'message': 'Too large resource version'}], 'retryAfterSeconds': 1})
                if not cont and match != 'Exact':
                    at = STORE.rv
            state = STORE.state_at(at)
            keys = sorted(k for k in state if k[:2] == res.gk and (ns is None or k[2] == ns))
            objs = [state[k] for k in keys
                    if (start_after is None or (k[2], k[3]) > start_after)
                    and labels_match(lsel, state[k]['metadata'].get('labels'))
                    and fields_match(fsel, state[k])]
        meta = {'resourceVersion': str(at)}
        if limit and len(objs) > limit:
            last = objs[limit - 1]['metadata']
            meta['continue'] = base64.urlsafe_b64encode(json.dumps({
                'v': 'meta.k8s.io/v1', 'rv': at,
                'start': [last.get('namespace', ''), last['name']]}).encode()).decode()
            meta['remainingItemCount'] = len(objs) - limit
            objs = objs[:limit]
        if fmt[0] == 'table':
            return self.send_obj(200, to_table(res, objs, fmt, at, params.get(
                'includeObject', 'Metadata'), {k: v for k, v in meta.items()
                                               if k != 'resourceVersion'}))
        if fmt[0] == 'partial':
            return self.send_obj(200, {'kind': 'PartialObjectMetadataList',
                                       'apiVersion': 'meta.k8s.io/' + fmt[1], 'metadata': meta,
                                       'items': [partial_meta(o, fmt[1]) for o in objs]})
        self.send_obj(200, {'apiVersion': res.gv, 'kind': res.list_kind, 'metadata': meta,
                            'items': [list_item(res, o) for o in objs]}, fmt)

    # -- watch

    def write_chunk(self, data):
        self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data))

    def client_gone(self):
        """The client closed its end (a watch client sends nothing while it watches)."""
        sock = self.connection
        try:
            r, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not r:
            return False
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    return sock.recv(1) == b''
                except ssl.SSLWantReadError:
                    return False
                finally:
                    sock.setblocking(True)
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b''
        except BlockingIOError:
            return False
        except OSError:
            return True

    def serve_watch(self, res, ns, params):
        fmt = negotiate(self.headers.get('Accept'))
        lsel = parse_label_selector(params.get('labelSelector'))
        fsel = parse_field_selector(params.get('fieldSelector'), res)
        rv_s = params.get('resourceVersion', '')
        if params.get('resourceVersionMatch'):
            raise bad_request('resourceVersionMatch is forbidden for watch')
        if rv_s and not rv_s.isdigit():
            raise bad_request('resourceVersion: Invalid value: "%s": strconv.ParseUint: parsing '
                              '"%s": invalid syntax' % (rv_s, rv_s))
        bookmarks = params.get('allowWatchBookmarks') in ('1', 'true', 'True')
        timeout = float(params.get('timeoutSeconds') or 1800)
        deadline = time.monotonic() + timeout
        include = params.get('includeObject', 'Metadata')

        def visible(obj):
            if obj is None:
                return False
            if ns is not None and obj['metadata'].get('namespace', '') != ns:
                return False
            return labels_match(lsel, obj['metadata'].get('labels')) and fields_match(fsel, obj)

        def shaped(obj):
            if fmt[0] == 'table':
                return to_table(res, [obj], fmt, obj['metadata']['resourceVersion'], include)
            if fmt[0] == 'partial':
                return partial_meta(obj, fmt[1])
            return for_version(res, obj)

        initial = []
        expired = False
        with STORE.cond:
            if rv_s in ('', '0'):
                pos = STORE.rv
                for k in sorted(STORE.objects):
                    if k[:2] == res.gk and visible(STORE.objects[k]):
                        initial.append({'type': 'ADDED', 'object': shaped(STORE.objects[k])})
            else:
                pos = int(rv_s)
                expired = pos < STORE.floor
            end_gen, bm_gen = STORE.end_gen, STORE.bookmark_gen
            STORE.watches += 1
        try:
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Transfer-Encoding', 'chunked')
            self.send_header('Cache-Control', 'no-cache, private')
            self.end_headers()
            if expired:
                self.send_event({'type': 'ERROR', 'object': status_object(
                    410, 'Expired', 'too old resource version: %d (%d)' % (pos, STORE.floor))})
                self.write_chunk(b'')
                return
            for ev in initial:
                if not self.send_event(ev):
                    return
            next_bookmark = time.monotonic() + OPTS.bookmark_interval
            while True:
                out = []
                ended = False
                with STORE.cond:
                    while True:
                        if STORE.end_gen != end_gen or time.monotonic() >= deadline:
                            ended = True
                            break
                        for e in STORE.events_after(pos):
                            rv, _, _, _, etype, obj, old = e
                            pos = rv
                            if e[1] != res.gk:
                                continue
                            now_in, was_in = visible(obj), visible(old)
                            if etype == 'ADDED' and now_in:
                                out.append({'type': 'ADDED', 'object': shaped(obj)})
                            elif etype == 'DELETED' and visible(obj):
                                out.append({'type': 'DELETED', 'object': shaped(obj)})
                            elif etype == 'MODIFIED':
                                if now_in and was_in:
                                    out.append({'type': 'MODIFIED', 'object': shaped(obj)})
                                elif now_in:
                                    out.append({'type': 'ADDED', 'object': shaped(obj)})
                                elif was_in:
                                    out.append({'type': 'DELETED', 'object': shaped(obj)})
                        pos = max(pos, STORE.rv)
                        if out:
                            break
                        if bookmarks and (STORE.bookmark_gen != bm_gen or
                                          time.monotonic() >= next_bookmark):
                            bm_gen = STORE.bookmark_gen
                            next_bookmark = time.monotonic() + OPTS.bookmark_interval
                            out.append({'type': 'BOOKMARK', 'object': {
                                'kind': res.kind, 'apiVersion': res.gv,
                                'metadata': {'resourceVersion': str(pos)}}})
                            break
                        STORE.cond.wait(timeout=max(0.01, min(
                            0.25, deadline - time.monotonic(),
                            next_bookmark - time.monotonic() if bookmarks else 0.25)))
                        if self.client_gone():
                            raise ClientGone()
                for ev in out:
                    if not self.send_event(ev):
                        return
                if ended:
                    self.write_chunk(b'')
                    return
                if self.client_gone():
                    raise ClientGone()
        finally:
            with STORE.cond:
                STORE.watches -= 1

    def send_event(self, ev):
        """Write one event; False when a fault closed the connection."""
        data = (json.dumps(ev) + '\n').encode()
        fault = None
        with STORE.cond:
            for f in STORE.watch_faults:
                if f.count > 0 and (ev['type'] != 'BOOKMARK' or f.bookmarks) and (
                        f.path is None or f.path.search(self.path)):
                    f.count -= 1
                    fault = f.kind
                    break
            STORE.watch_faults = [f for f in STORE.watch_faults if f.count > 0]
        if fault is None:
            self.write_chunk(data)
            return True
        half = len(data) // 2
        self.log_line('  watch fault %s on %s' % (fault, self.path))
        self.write_chunk(data[:half])
        if fault == 'close':
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        time.sleep(0.2)
        self.write_chunk(data[half:])
        return True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context = None

    def finish_request(self, request, client_address):
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as e:
                if OPTS.log:
                    with open(OPTS.log, 'a') as f:
                        f.write('%s TLS handshake failed: %s\n' % (time.strftime('%H:%M:%S'), e))
                request.close()
                return
        self.RequestHandlerClass(request, client_address, self)

    def handle_error(self, request, client_address):
        if OPTS.log:
            import traceback
            with open(OPTS.log, 'a') as f:
                f.write(traceback.format_exc())


# ---- certificates and kubeconfig -------------------------------------------------------------

def openssl(*args):
    subprocess.run(['openssl'] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_certs(d):
    """ca.crt/ca.key, server.crt/server.key (127.0.0.1, localhost), client.crt/client.key
    (CN etcdproxy-node, O etcdproxy:nodes) in d, unless they are there already."""
    os.makedirs(d, exist_ok=True)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    names = ['ca.crt', 'ca.key', 'server.crt', 'server.key', 'client.crt', 'client.key']
    if all(os.path.exists(p(n)) for n in names):
        return
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    openssl('req', '-x509', *ec, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '3650',
            '-subj', '/CN=etcdproxy-test-apiserver-ca',
            '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature')
    for who, subj, ext in (
            ('server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n'
             'extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n'),
            ('client', '/O=etcdproxy:nodes/CN=etcdproxy-node', 'extendedKeyUsage=clientAuth\n'
             'keyUsage=critical,digitalSignature,keyEncipherment\n')):
        with open(p(who + '.ext'), 'w') as f:
            f.write(ext)
        openssl('req', *ec, '-keyout', p(who + '.key'), '-out', p(who + '.csr'), '-subj', subj)
        openssl('x509', '-req', '-in', p(who + '.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'),
                '-CAcreateserial', '-days', '3650', '-extfile', p(who + '.ext'),
                '-out', p(who + '.crt'))
        os.unlink(p(who + '.csr'))
        os.unlink(p(who + '.ext'))
    for n in names:
        os.chmod(p(n), 0o600 if n.endswith('.key') else 0o644)


def b64file(path):
    with open(path, 'rb') as f:
        return base64.b64encode(f.read()).decode()


def write_kubeconfigs(path, url):
    def config(cluster, user):
        return {'apiVersion': 'v1', 'kind': 'Config', 'preferences': {},
                'clusters': [{'name': 'standin', 'cluster': cluster}],
                'users': [{'name': 'standin', 'user': user}],
                'contexts': [{'name': 'standin', 'context': {
                    'cluster': 'standin', 'user': 'standin', 'namespace': 'default'}}],
                'current-context': 'standin'}

    def write(p, cfg):
        with open(p + '.tmp', 'w') as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        os.chmod(p + '.tmp', 0o600)
        os.rename(p + '.tmp', p)

    token = None
    if OPTS.tokens:
        try:
            with open(OPTS.tokens) as f:
                token = next((line.strip() for line in f if line.strip()), None)
        except OSError:
            pass
    if OPTS.tls:
        d = os.path.abspath(OPTS.tls)
        j = lambda n: os.path.join(d, n)  # noqa: E731
        write(path, config({'server': url, 'certificate-authority-data': b64file(j('ca.crt'))},
                           {'client-certificate-data': b64file(j('client.crt')),
                            'client-key-data': b64file(j('client.key'))}))
        write(path + '.paths', config({'server': url, 'certificate-authority': j('ca.crt')},
                                      {'client-certificate': j('client.crt'),
                                       'client-key': j('client.key')}))
    else:
        write(path, config({'server': url}, {'token': token} if token else {}))


# ---- main ------------------------------------------------------------------------------------

def load_crds(paths):
    for path in paths:
        if not path:
            continue
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            if d.get('kind') == 'CustomResourceDefinition':
                create_object(STORE.lookup('apiextensions.k8s.io', 'v1',
                                           'customresourcedefinitions'), '', d)


def main():
    global OPTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--listen', required=True, help='HOST:PORT (127.0.0.1 only)')
    ap.add_argument('--kubeconfig-out', required=True)
    ap.add_argument('--crd', action='append', help='a CRD file to serve (repeatable); '
                    '\'\' for none')
    ap.add_argument('--tls', help='a directory for the CA and certificates; serve HTTPS')
    ap.add_argument('--tokens', help='a file of accepted bearer tokens, one a line')
    ap.add_argument('--log', help='append a line per request to this file')
    ap.add_argument('--bookmark-interval', type=float, default=1.0)
    OPTS = ap.parse_args()
    host, _, port = OPTS.listen.rpartition(':')
    if host not in ('127.0.0.1', 'localhost'):
        ap.error('--listen binds only on 127.0.0.1')
    host = '127.0.0.1'
    OPTS.listen = '%s:%s' % (host, port)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))

    with STORE.cond:
        nsr = ns_resource()
        for n in ('default', 'kube-system', 'kube-public', 'kube-node-lease'):
            create_object(nsr, '', {'apiVersion': 'v1', 'kind': 'Namespace',
                                    'metadata': {'name': n}})
    load_crds(OPTS.crd if OPTS.crd is not None else [DEFAULT_CRD])

    server = Server((host, int(port)), Handler)
    scheme = 'http'
    if OPTS.tls:
        make_certs(OPTS.tls)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(OPTS.tls, 'server.crt'),
                            os.path.join(OPTS.tls, 'server.key'))
        ctx.load_verify_locations(os.path.join(OPTS.tls, 'ca.crt'))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        server.ssl_context = ctx
        scheme = 'https'
    OPTS.listen = '%s:%d' % (host, server.server_address[1])
    write_kubeconfigs(OPTS.kubeconfig_out, '%s://%s' % (scheme, OPTS.listen))
    print('ready', flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == '__main__':
    main()
