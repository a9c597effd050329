"""Print the package's requirements (core plus the named extras), one per line.

Images install these in a layer of their own, before the code is copied, so that a code
change does not reinstall torch and vLLM:  python3 requirements.py pyproject.toml EXTRA[,EXTRA]
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
requirements = list(project["dependencies"])
for extra in filter(None, (sys.argv[2] if len(sys.argv) > 2 else "").split(",")):
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
