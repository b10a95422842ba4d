#!/usr/bin/env bash
# Build the image for linux/amd64, push it to the stack's ECR repository, and create or update
# the CloudFormation stack (deploy/template.yaml) that runs it on ECS Express Mode; print the
# dashboard's address at the end.
#
#   deploy/deploy.sh [--stack NAME] [--region REGION] [--database-url-secret ARN]
#                    [--access token|open] [--rollback TAG] [--delete] [--dry-run]
#
# --dry-run prints every command (AWS CLI and Docker) instead of running it.
# --rollback TAG runs an image already in the repository (see README.md), without building.
# --delete tears the stack down: service, load balancer rules, roles, repository and images.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
stack="drivendata"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
database_secret=""
access=""
rollback=""
delete=0
dry_run=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack="$2"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --database-url-secret) database_secret="$2"; shift 2 ;;
    --access) access="$2"; shift 2 ;;
    --rollback) rollback="$2"; shift 2 ;;
    --delete) delete=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unknown option $1; see deploy/deploy.sh --help." >&2; exit 2 ;;
  esac
done

case "$access" in
  ""|token|open) ;;
  *) echo "--access takes token or open, not '$access'." >&2; exit 2 ;;
esac

# Print a command (on stderr, as set -x would); run it unless this is a dry run.
show() { { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2; }

run() {
  show "$@"
  if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

# Print a command and echo its output; a dry run echoes the placeholder given first.
capture() {
  local placeholder="$1"; shift
  show "$@"
  if [ "$dry_run" -eq 0 ]; then "$@"; else echo "$placeholder"; fi
}

output() {
  capture "<$1>" aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

if [ "$dry_run" -eq 0 ]; then
  for tool in aws docker; do
    command -v "$tool" >/dev/null || {
      echo "deploy.sh needs '$tool' on PATH; install it (see README.md, prerequisites)." >&2
      exit 1
    }
  done
fi

if [ "$delete" -eq 1 ]; then
  run aws cloudformation delete-stack --region "$region" --stack-name "$stack"
  run aws cloudformation wait stack-delete-complete --region "$region" --stack-name "$stack"
  echo "Deleted the stack $stack in $region."
  exit 0
fi

overrides=()
[ -n "$database_secret" ] && overrides+=("DatabaseUrlSecretArn=$database_secret")
[ "$access" = open ] && overrides+=("OpenAccess=true")
[ "$access" = token ] && overrides+=("OpenAccess=false")

deploy_stack() {
  local args=(aws cloudformation deploy --region "$region" --stack-name "$stack"
    --template-file "$here/template.yaml" --capabilities CAPABILITY_IAM
    --no-fail-on-empty-changeset)
  if [ $# -gt 0 ] || [ ${#overrides[@]} -gt 0 ]; then
    args+=(--parameter-overrides "${overrides[@]}" "$@")
  fi
  run "${args[@]}"
}

if [ -n "$rollback" ]; then
  tag="$rollback"
else
  # 1. The repository (and roles, token) first; an existing service keeps its image meanwhile.
  deploy_stack
  repository="$(output RepositoryUri)"
  tag="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo local)-$(date -u +%Y%m%d%H%M%S)"
  # 2. Build for Fargate's platform and push.
  registry="${repository%%/*}"
  echo "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry" >&2
  if [ "$dry_run" -eq 0 ]; then
    aws ecr get-login-password --region "$region" \
      | docker login --username AWS --password-stdin "$registry"
  fi
  run docker buildx build --platform linux/amd64 --tag "$repository:$tag" --push "$root"
fi

# 3. Run that image.
deploy_stack "ImageTag=$tag"
url="$(output Url)"
case "$url" in http*) ;; *) url="https://$url" ;; esac
echo "Deployed image $tag."
echo "The dashboard: $url"
if [ "$access" != open ]; then
  token_secret="$(output TokenSecretArn)"
  echo "Viewers open it once with ?token=<token>; the token:"
  echo "  aws secretsmanager get-secret-value --region $region --secret-id $token_secret --query SecretString --output text"
fi
