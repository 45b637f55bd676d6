"""The API's routes, one APIRouter per area; ``healthsync.api.app`` includes them all."""
