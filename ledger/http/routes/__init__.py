"""The API's routes, one module per dataset; each is an APIRouter that ledger/http/app.py mounts under /v1."""
