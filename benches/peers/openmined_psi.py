"""OpenMined PSI in cardinality mode on two CSV key columns (one process,
both roles, no network: the peer's compute cost alone). Prints JSON."""
import csv
import json
import sys
import time

import private_set_intersection.python as psi


def keys(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        next(r)
        return [row[0] for row in r]


def main():
    server_items = keys(sys.argv[1])
    client_items = keys(sys.argv[2])
    t = time.perf_counter()
    reveal_intersection = False  # cardinality only, like cleanroom's count
    client = psi.client.CreateWithNewKey(reveal_intersection)
    server = psi.server.CreateWithNewKey(reveal_intersection)
    fpr = 1e-9
    setup = server.CreateSetupMessage(
        fpr, len(client_items), server_items, psi.DataStructure.RAW
    )
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    size = client.GetIntersectionSize(setup, response)
    seconds = time.perf_counter() - t
    print(json.dumps({"peer": "openmined-psi", "seconds": seconds, "cardinality": size}))


if __name__ == "__main__":
    main()
