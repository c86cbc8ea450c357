"""The one exception hierarchy of prescreen.

Every error the package raises on purpose derives from :class:`PrescreenError`; the
edges (CLI, HTTP API) turn it into an exit code or a 4xx answer with its message.
"""

from __future__ import annotations


class PrescreenError(Exception):
    """Base class of every error prescreen raises on purpose."""


class InvalidStudyError(PrescreenError):
    """A study (record, image) cannot be read or used by the pipeline; the message says why."""


class UnsupportedStudyError(InvalidStudyError):
    """A study that is readable but that no model screens (e.g. a DICOM without waveform)."""


class NotAssessableError(InvalidStudyError):
    """A readable study without content to judge (blank or near-constant image, mostly empty, absurd
    aspect ratio; flat or saturated ECG): a pre-screen must neither flag nor clear it (HTTP 422)."""


class StudyTooLargeError(InvalidStudyError):
    """A study over a size limit (bytes or pixels)."""


class MissingIdentifierError(InvalidStudyError):
    """A DICOM instance without a UID the store files it by (study, series or SOP instance), or with
    one that is too long or names another study's series."""


class UnsupportedMediaTypeError(InvalidStudyError):
    """A request body of a media type the endpoint does not take (e.g. STOW-RS not ``application/dicom``)."""


class ExplanationNotFoundError(PrescreenError):
    """No explanation overlay of that name."""


class DatasetError(PrescreenError):
    """A labelled data set is missing or not in the expected layout."""


class UnknownTaskError(PrescreenError):
    """A task name that is not registered."""


class ModelError(PrescreenError):
    """A model file, card or model-store entry is missing, corrupt or inconsistent."""


class ExportError(ModelError):
    """ONNX export failed, or the exported model disagrees with torch."""


class InvalidRequestError(PrescreenError):
    """A request that is not valid as sent (a missing comment, a malformed field); HTTP 400."""


class ServiceUnavailableError(PrescreenError):
    """The service cannot answer yet (starting: models not loaded, store not open); HTTP 503."""


class ServiceBusyError(ServiceUnavailableError):
    """Every screening slot is taken and none came free in time; try again shortly (HTTP 503 with
    ``Retry-After``)."""


class BlobStoreUnavailableError(ServiceUnavailableError):
    """The object store did not confirm a write or a read (unreachable, refused, timed out): nothing
    that depends on it is acknowledged."""


class BlobNotFoundError(PrescreenError):
    """No blob with that key."""


class InvalidUserError(PrescreenError):
    """A user that cannot be created as given (login, grade, specialty or password)."""


class DeliveryError(PrescreenError):
    """A result could not be delivered (DICOM C-STORE, FHIR); the message says why."""


class InvalidDestinationError(PrescreenError, ValueError):
    """A DICOM destination (``AE@host:port``) or AE title that cannot be used; the message says why."""


class NotAuthenticatedError(PrescreenError):
    """No valid credentials: a wrong login or password, a missing or expired token (HTTP 401)."""


class MfaRequiredError(NotAuthenticatedError):
    """The password was right, but this user signs in with a second factor too: send ``totp``
    (HTTP 401 ``mfa_required``)."""


class StepUpRequiredError(NotAuthenticatedError):
    """A sensitive operation needs a second factor given within the last few minutes: ``POST
    /v1/auth/step-up`` first (HTTP 401 ``step_up_required``)."""


class ForbiddenError(PrescreenError):
    """The user may not do this: a role, grade or specialty that does not allow it (HTTP 403)."""


class ConflictError(PrescreenError):
    """The resource's state does not allow it now: claimed by someone else, already final (HTTP 409)."""


class NotFoundError(PrescreenError):
    """No such resource (HTTP 404)."""


class RulesError(PrescreenError):
    """An invalid routing-rules file; the message names the rule and its line."""


class TooManyAttemptsError(PrescreenError):
    """Too many failed sign-ins for one login in a short time (HTTP 429)."""


class AuditIntegrityError(PrescreenError):
    """The audit trail does not verify: a record was changed, deleted, inserted or reordered, or a
    signed checkpoint does not match; the message names the first broken record."""


class KeyFileError(PrescreenError):
    """A key file is missing, unreadable or of the wrong kind."""


class PromotionRefusedError(PrescreenError):
    """A change of a task's model that the lifecycle rules refuse: a candidate that fails the
    promotion gate (worse than the active model, or an incomplete card), or an activation of a model
    that was never active (a new model goes through ``prescreen models promote``)."""
